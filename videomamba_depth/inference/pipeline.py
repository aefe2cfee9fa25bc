"""Two bounded hand-off queues that let ``infer`` decode and write while the model runs.

- :func:`prefetch`: a producer (decoding, preprocessing) runs in a background thread, ahead of the consumer;
- :class:`Drain`: a consumer (upsampling, Zarr writes, preview encoding) runs in a background thread, behind
  the producer.

The heavy work in those threads (FFmpeg decoding, cv2 resizing, Blosc compression, x264 encoding, torch) runs
outside the GIL, so on two cores the model step and everything else overlap. Queues are bounded: memory holds
at most ``depth`` items per queue. An error in a background thread is re-raised in the calling thread (at
the next hand-off or when closing), and an error in the calling thread stops the background thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()
# Seconds a blocked hand-off waits before it checks again whether the other side has stopped.
_POLL_S = 0.1


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set while waiting; True if it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], depth: int, name: str = "prefetch") -> Iterator[T]:
    """Yield the items of ``items``, produced up to ``depth`` ahead by a background thread.

    Errors of the producer are raised here, after the items it produced before them. Closing this generator
    early (or an error in the consumer) stops the producer and closes ``items`` if it is a generator.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not _put(q, item, stop):
                    break
        except BaseException as exc:  # re-raised in the consumer's thread
            errors.append(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            _put(q, _DONE, stop)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            yield item
        if errors:
            raise errors[0]
    finally:
        stop.set()
        thread.join()


class Drain(Generic[T]):
    """Calls ``consume(item)`` on every :meth:`put` item, in order, in a background thread.

    Use as a context manager: a normal exit waits for the queued items (:meth:`close`) and raises the
    consumer's error, if any; an exit by exception drops the queued items and stops the thread.
    """

    def __init__(self, consume: Callable[[T], None], depth: int, name: str = "drain") -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE or self._stop.is_set():
                return
            try:
                self._consume(item)
            except BaseException as exc:  # re-raised in the producer's thread
                self._errors.append(exc)
                self._stop.set()
                return

    def _raise_error(self) -> None:
        if self._errors:
            raise self._errors[0]

    def put(self, item: T) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the consumer's error if it failed."""
        self._raise_error()
        if not _put(self._queue, item, self._stop):
            self._raise_error()
            raise RuntimeError(f"{self._thread.name}: consumer stopped")

    def close(self) -> None:
        """Wait until every queued item is consumed; raise the consumer's error, if any."""
        if self._thread.is_alive():
            _put(self._queue, _DONE, self._stop)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> Drain[T]:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop.set()
            self._thread.join()
