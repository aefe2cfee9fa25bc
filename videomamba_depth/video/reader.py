"""Streaming video sources: decord, PyAV and folders of frames behind one interface.

:func:`open_video` returns a :class:`VideoSource` whose :meth:`~VideoSource.iter_batches` yields
``(n, H, W, 3)`` uint8 RGB batches, so a long or high-resolution video is never held in memory whole. The
backend is an explicit choice (``decode.backend``); one never silently replaces the other.

Checks shared by both video backends come from one PyAV probe (:func:`probe_video`): a video stream exists,
the first frame decodes, the frame rate is known, and how many coded frames the container declares (to
detect truncated files, :func:`check_complete`).

While decoding, a :class:`FrameLog` records each frame's presentation time and whether the decoder flagged
it as damaged (a corrupt or concealed frame, or one predicted from such a frame before the next keyframe),
and every packet the decoder rejected. PyAV reports these directly; decord cannot, so :class:`DecordSource`
runs the same PyAV decode (without colour conversion) in a thread alongside it (:class:`IntegrityScan`).
What to do with damaged frames is the caller's choice (``decode.on_corrupt``).

Timing: frames are yielded as coded, each with its own timestamp; a container's "repeat the previous frame"
entries (an AVI index with empty entries, i.e. variable frame timing) are not expanded into duplicates.

decord is the primary decoder, but on corrupt input it can abort the process from a C++ worker thread, loop
forever rewinding, or silently repeat the last good frame. It therefore runs in a child process
(:class:`DecordSource`, :mod:`~videomamba_depth.video.decord_worker`): a crash or a stall becomes a
:class:`VideoError` naming the file, and decord's fault tolerance is set so that any substituted frame is an
error.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from videomamba_depth.errors import InputError
from videomamba_depth.video import decord_worker

BACKENDS = ("decord", "pyav")
FOLDER_BACKEND = "opencv"
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
     ".3gp", ".ogv", ".y4m", ".gif"}
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Frame rate recorded for a folder of frames, which carries no timing (``decode.folder_fps`` overrides it).
DEFAULT_FOLDER_FPS = 30.0

# Seconds the decord child may go without answering (opening, which indexes every packet, or one batch)
# before it is declared hung and killed. Generous: a batch is at most one shard (~128 MiB of frames).
DECORD_STALL_TIMEOUT_S = 300.0
# A frame count estimated from the container duration (formats without a frame index, e.g. Matroska) may be
# off by rounding; this many frames (or this fraction) short still counts as complete.
_ESTIMATE_SLACK_FRAMES = 2
_ESTIMATE_SLACK_FRACTION = 0.02
# Frame intervals that differ from the median interval by more than this fraction mark variable frame timing
# (time-base rounding, e.g. 33/34 ms at 30 frames/s in a 1 ms time base, stays well below it).
VFR_TOLERANCE = 0.1


class VideoError(InputError):
    """A video or frame folder that cannot be decoded; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about a video file, read by PyAV without decoding more than one frame."""

    codec: str
    pixel_format: str
    size: tuple[int, int]  # (W, H) as displayed, i.e. after rotation
    fps: float
    rotation: int  # degrees counter-clockwise to display the coded frames upright: 0, 90, 180 or 270
    expected_frames: int | None
    expected_exact: bool  # expected_frames comes from a frame count in the header, not a duration estimate
    # Coded frames listed by an index the demuxer read whole on opening (an mp4's sample table, an AVI's idx1,
    # which leaves out empty "repeat the previous frame" entries); fewer when the index is partial or absent.
    indexed_frames: int


class VideoSource:
    """A stream of RGB frames. Use as a context manager; iterate once with :meth:`iter_batches`.

    Attributes: ``path``, ``backend`` and ``backend_version``; ``num_frames`` (None when the container does
    not say, e.g. PyAV on Matroska); ``fps``; ``size`` (W, H) of the frames yielded; ``conversions``, the
    documented conversions applied to reach 8-bit RGB (grayscale replicated, alpha dropped, ...);
    ``info``, extra facts about the source (codec, pixel format, rotation) for the store attributes;
    ``log``, the :class:`FrameLog` of the frames yielded (complete once they have all been iterated).
    """

    path: Path
    backend: str
    backend_version: str
    num_frames: int | None
    fps: float
    size: tuple[int, int]
    conversions: tuple[str, ...] = ()
    info: dict
    log: FrameLog

    def iter_batches(self, n: int) -> Iterator[np.ndarray]:
        """Yield fresh ``(<=n, H, W, 3)`` uint8 arrays in frame order; :class:`VideoError` on bad data."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_video(
    path: str | Path,
    backend: str,
    *,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    stall_timeout_s: float = DECORD_STALL_TIMEOUT_S,
) -> VideoSource:
    """Open a video file with ``backend`` ("decord" or "pyav"), or a folder of frames (backend unused).

    Raises :class:`VideoError` naming the path when it is missing, not a video, empty or unreadable.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {list(BACKENDS)}")
    if path.is_dir():
        return FrameFolderSource(path, folder_fps)
    if backend == "decord":
        return DecordSource(path, stall_timeout_s=stall_timeout_s)
    return PyAVSource(path)


# ---------------------------------------------------------------------------------------------------------
# Video files: probe (PyAV), PyAV source, decord source


def _check_video_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file or a folder of frames")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(
            f"{path}: unsupported file type {path.suffix!r}; expected a video file "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder of frames"
        )
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def _conversions(pixel_format: str) -> tuple[str, ...]:
    """Documented conversions a decoder applies to reach 8-bit RGB from ``pixel_format``."""
    fmt = av.VideoFormat(pixel_format)
    notes = []
    if not fmt.has_palette:
        components = len(fmt.components)
        if components in (1, 2):
            notes.append("grayscale replicated to R=G=B")
        if components in (2, 4):
            notes.append("alpha channel dropped")
        if max(c.bits for c in fmt.components) > 8:
            notes.append(f"{max(c.bits for c in fmt.components)}-bit samples rounded to 8 bits")
    return tuple(notes)


def probe_video(path: str | Path) -> VideoProbe:
    """Read the container header and decode the first frame; :class:`VideoError` when that fails."""
    path = Path(path)
    _check_video_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream (the file holds no frames)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            first = next(container.decode(stream), None)
            if first is None:
                raise VideoError(f"{path}: the video stream holds no frames")
            duration_s = None
            if stream.duration is not None and stream.time_base is not None:
                duration_s = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration_s = container.duration / av.time_base
            codec, pixel_format = stream.codec_context.name, first.format.name
            width, height, rotation = first.width, first.height, int(first.rotation) % 360
            frames_in_header = stream.frames
            indexed = len(stream.index_entries)
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({_ffmpeg_message(exc)})") from exc
    if not rate or rate <= 0:
        raise VideoError(f"{path}: the container gives no frame rate")
    if rotation % 90:
        raise VideoError(f"{path}: unsupported rotation {rotation} degrees (only multiples of 90)")
    if rotation in (90, 270):
        width, height = height, width
    fps = float(Fraction(rate))
    if frames_in_header > 0:
        expected, exact = int(frames_in_header), True
    elif duration_s:
        expected, exact = round(duration_s * fps), False
    else:
        expected, exact = None, False
    return VideoProbe(codec, pixel_format, (width, height), fps, rotation, expected, exact, indexed)


def _ffmpeg_message(exc: av.error.FFmpegError) -> str:
    return exc.strerror or str(exc)


def check_complete(path: Path, probe: VideoProbe, coded: int) -> None:
    """Raise when the file holds fewer coded frames (packets) than its container declares: a truncated file.

    An index read whole on opening lists exactly the coded frames, so it is the count to meet (an AVI with
    empty "repeat the previous frame" entries has fewer coded frames than its header's frame count, and is
    complete). Without one (lost with the end of the file, or none in the format), the header's frame count
    or, failing that, duration x frame rate (with a little slack for rounding) is.
    """
    if 0 < coded <= probe.indexed_frames:
        expected, what, slack = probe.indexed_frames, "indexes", 0
    elif probe.expected_frames is not None:
        expected = probe.expected_frames
        what = "declares" if probe.expected_exact else "implies (duration x fps)"
        slack = 0 if probe.expected_exact else max(
            _ESTIMATE_SLACK_FRAMES, round(_ESTIMATE_SLACK_FRACTION * expected)
        )
    else:
        return
    if coded < expected - slack:
        raise VideoError(
            f"{path}: truncated or corrupt video: the container {what} {expected} frames, only {coded} "
            "are in the file"
        )


def _probe_info(probe: VideoProbe) -> dict:
    return {"codec": probe.codec, "pixel_format": probe.pixel_format, "rotation_degrees": probe.rotation,
            "container_fps": probe.fps}


class FrameLog:
    """What decoding found out about each frame yielded, and about the packets it could not use.

    ``coded`` counts the packets read (coded frames); ``rejected`` describes each packet the decoder refused
    (its frame is missing: a gap in the timestamps). A frame counts as corrupt when the decoder flagged it
    (``AV_FRAME_FLAG_CORRUPT`` or decode-error flags: concealed errors) or when it is predicted from a
    corrupt frame or a rejected packet, up to the next keyframe (damage propagates through references).
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.coded = 0
        self.rejected: list[str] = []
        self._times: list[float] = []
        self._corrupt: list[bool] = []
        self._tainted = False

    def __len__(self) -> int:
        return len(self._times)

    def add(self, time_s: float | None, *, corrupt: bool = False, keyframe: bool = True) -> None:
        """Record the next frame: its presentation time in seconds (None: one frame after the previous)."""
        self._tainted = corrupt or (self._tainted and not keyframe)
        self._corrupt.append(self._tainted)
        if time_s is None:
            time_s = self._times[-1] + 1 / self.fps if self._times else 0.0
        self._times.append(float(time_s))

    def reject(self, message: str) -> None:
        """Record a packet the decoder refused; the frames predicted from it are damaged too."""
        self.rejected.append(message)
        self._tainted = True

    @property
    def timestamps(self) -> np.ndarray:
        """``(T,)`` float64 presentation times in seconds from the first frame (``timestamps[0] == 0``)."""
        times = np.asarray(self._times, np.float64)
        return times - times[0] if len(times) else times

    @property
    def corrupt(self) -> np.ndarray:
        """``(T,)`` bool: frame t is damaged (see the class docstring)."""
        return np.asarray(self._corrupt, bool)

    @property
    def variable_rate(self) -> bool:
        """Frame intervals differ by more than ``VFR_TOLERANCE`` of their median: variable frame timing."""
        intervals = np.diff(self.timestamps)
        if len(intervals) < 2:
            return False
        median = float(np.median(intervals))
        return bool(np.abs(intervals - median).max() > VFR_TOLERANCE * median)

    def damage(self) -> str:
        """One phrase: how many frames are damaged (the first, and when), how many packets were rejected."""
        damaged = np.flatnonzero(self.corrupt)
        parts = []
        if len(damaged):
            first = int(damaged[0])
            parts.append(f"{len(damaged)} of {len(self)} decoded frames damaged (first: frame {first} at "
                         f"{self.timestamps[first]:.3f} s)")
        if self.rejected:
            parts.append(
                f"{len(self.rejected)} packet(s) rejected by the decoder (first: {self.rejected[0]})"
            )
        return ", ".join(parts)

    @property
    def mean_fps(self) -> float:
        """Frames per second over the frames' time span (the nominal rate for fewer than two frames)."""
        span = self.timestamps[-1] if len(self) > 1 else 0.0
        return (len(self) - 1) / span if span > 0 else self.fps


def _decode_frames(
    path: Path, log: FrameLog, stop: threading.Event | None = None
) -> Iterator[av.VideoFrame]:
    """Decode the first video stream of ``path`` packet by packet, recording every frame in ``log``.

    A packet the decoder rejects as invalid is recorded and skipped (the caller decides whether damage is
    fatal); any other FFmpeg error (unreadable container data) raises :class:`VideoError`.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if stop is not None and stop.is_set():
                    return
                if packet.size:  # the final empty packet only flushes the decoder
                    log.coded += 1
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as exc:
                    log.reject(f"packet {log.coded - 1} ({_ffmpeg_message(exc)})")
                    continue
                for frame in frames:
                    log.add(frame.time, corrupt=frame.is_corrupt, keyframe=frame.key_frame)
                    yield frame
    except av.error.FFmpegError as exc:
        message = _ffmpeg_message(exc)
        raise VideoError(f"{path}: corrupt video data after frame {len(log)} ({message})") from exc


class PyAVSource(VideoSource):
    """Decodes in-process with PyAV (``container.decode``, converted to rgb24).

    Frames are rotated upright when the stream carries a display rotation, so both backends and video players
    agree on orientation (intrinsics refer to the upright frames).
    """

    backend = "pyav"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.probe = probe_video(self.path)
        self.backend_version = av.__version__
        self.fps = self.probe.fps
        self.size = self.probe.size
        self.conversions = _conversions(self.probe.pixel_format)
        self.info = _probe_info(self.probe)
        self.log = FrameLog(self.fps)
        # Only a complete frame count is trusted up front: an index that agrees with the header's count.
        exact = self.probe.expected_exact and self.probe.indexed_frames == self.probe.expected_frames
        self.num_frames = self.probe.expected_frames if exact else None

    def iter_batches(self, n: int) -> Iterator[np.ndarray]:
        width, height = self.size
        batch = np.empty((n, height, width, 3), np.uint8)
        filled = 0
        for frame in _decode_frames(self.path, self.log):
            rgb = frame.to_ndarray(format="rgb24")
            if self.probe.rotation:
                rgb = np.rot90(rgb, k=self.probe.rotation // 90)  # counter-clockwise, as PyAV reports
            if rgb.shape != batch.shape[1:]:
                raise VideoError(
                    f"{self.path}: frame {len(self.log) - 1} is {rgb.shape[1]}x{rgb.shape[0]}, the video "
                    f"started at {width}x{height} (size changes mid-stream are not supported)"
                )
            batch[filled] = rgb
            filled += 1
            if filled == n:
                yield batch
                batch = np.empty((n, height, width, 3), np.uint8)
                filled = 0
        if filled:
            yield batch[:filled]
        check_complete(self.path, self.probe, self.log.coded)


class IntegrityScan(threading.Thread):
    """Decodes a video file with PyAV, without colour conversion, to fill a :class:`FrameLog`.

    Runs alongside decord (which reports neither damaged frames nor timestamps); PyAV's decoding releases the
    GIL, so on a multi-core machine it mostly overlaps with decord's child process. :meth:`result` waits for
    it and re-raises its :class:`VideoError`; :meth:`cancel` stops it early.
    """

    def __init__(self, path: Path, probe: VideoProbe) -> None:
        super().__init__(name=f"integrity scan of {path.name}", daemon=True)
        self.path, self.probe = path, probe
        self.log = FrameLog(probe.fps)
        self.error: VideoError | None = None
        self._cancelled = threading.Event()

    def run(self) -> None:
        try:
            for _ in _decode_frames(self.path, self.log, self._cancelled):
                pass
            if not self._cancelled.is_set():
                check_complete(self.path, self.probe, self.log.coded)
        except VideoError as exc:
            self.error = exc

    def result(self) -> FrameLog:
        self.join()
        if self.error is not None:
            raise self.error
        return self.log

    def cancel(self) -> None:
        self._cancelled.set()
        self.join()


class DecordSource(VideoSource):
    """Decodes with decord in a child process, streaming batches of consecutive frames through a socket.

    The next batch is requested before the current one is handed out, so decoding overlaps with whatever the
    caller does with the frames. ``stall_timeout_s`` bounds how long the child may go silent.
    """

    backend = "decord"

    def __init__(self, path: Path, *, stall_timeout_s: float = DECORD_STALL_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.probe = probe_video(self.path)
        if self.probe.rotation:
            # decord 0.6 returns 4-channel, mis-rotated frames for such streams (checked with a rotated mp4).
            raise VideoError(
                f"{self.path}: the stream asks for a {self.probe.rotation} degree display rotation, which "
                "decord mishandles; set decode.backend: pyav for this video set"
            )
        self.fps = self.probe.fps
        self.size = self.probe.size
        self.conversions = _conversions(self.probe.pixel_format)
        # Damage flags and timestamps come from the IntegrityScan, not from decord: recorded with the source.
        self.info = {**_probe_info(self.probe), "damage_and_timing_from": f"pyav {av.__version__}"}
        self.log = FrameLog(self.fps)
        self.stall_timeout_s = stall_timeout_s
        self._scan: IntegrityScan | None = None
        # A separate interpreter (not multiprocessing, whose spawn re-imports the caller's __main__ and fails
        # in unguarded scripts), talking over an inherited socket; a timeout on every read detects a stall.
        self._sock, child_sock = socket.socketpair()
        self._sock.settimeout(stall_timeout_s)
        with child_sock:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "videomamba_depth.video.decord_worker", str(child_sock.fileno()),
                 str(self.path)],
                pass_fds=(child_sock.fileno(),),
                # The worker never reads stdin; detach it so a parent whose stdin is a script or a
                # terminal it does not own cannot stall the child.
                stdin=subprocess.DEVNULL,
            )
        try:
            _, self.num_frames, self.backend_version = self._receive("opening the file")
            # decord counts the packets it indexed; fewer than the container declares means a cut-off file.
            check_complete(self.path, self.probe, self.num_frames)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pid(self) -> int:
        """Process id of the decord child."""
        return self._process.pid

    def _guard(self, doing: str, transfer: Callable[[], Any]) -> Any:
        """Run a socket transfer; a stall, a crash or a closed socket becomes a :class:`VideoError`."""
        hint = "the file is probably corrupt (decode.backend: pyav may report the problem more precisely)"
        try:
            return transfer()
        except TimeoutError as exc:
            self._process.kill()
            raise VideoError(f"{self.path}: decord stalled for {self.stall_timeout_s:g} s while {doing} and "
                             f"was stopped; {hint}") from exc
        except (EOFError, ConnectionError) as exc:
            raise VideoError(f"{self.path}: decord {self._death()} while {doing}; {hint}") from exc

    def _receive(self, doing: str) -> list:
        message = self._guard(doing, lambda: decord_worker.receive(self._sock))
        if message[0] == "error":
            raise self._decord_failed(doing, message[1])
        return message

    def _integrity_scan(self) -> IntegrityScan:
        if self._scan is None:
            self._scan = IntegrityScan(self.path, self.probe)
            self._scan.start()
        return self._scan

    def _decord_failed(self, doing: str, detail: str) -> VideoError:
        """decord's error, with what PyAV makes of the same file: valid (use it) or damaged (how)."""
        failed = f"{self.path}: decord failed while {doing} ({detail})"
        try:
            log = self._integrity_scan().result()
        except VideoError as exc:
            reason = str(exc).removeprefix(f"{self.path}: ")
            return VideoError(f"{failed}; PyAV cannot read it either: {reason}")
        if log.corrupt.any() or log.rejected:
            return VideoError(f"{failed}; PyAV finds {log.damage()}: decode.backend: pyav with "
                              "decode.on_corrupt: record keeps the video with those frames marked")
        return VideoError(f"{failed}; the video is valid: PyAV decodes all {len(log)} frames, so "
                          "decode.backend: pyav reads it")

    def _death(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return "closed its socket without answering"
        if code < 0:
            return f"crashed ({signal.Signals(-code).name})"
        return f"exited unexpectedly (exit code {code})"

    def _request(self, start: int, stop: int) -> None:
        self._guard(f"requesting frame {start}", lambda: decord_worker.send(self._sock, [start, stop]))

    def iter_batches(self, n: int) -> Iterator[np.ndarray]:
        scan = self._integrity_scan()
        starts = list(range(0, self.num_frames, n))
        if starts:
            self._request(0, min(n, self.num_frames))
        for i, start in enumerate(starts):
            stop = min(start + n, self.num_frames)
            doing = f"decoding frames {start}-{stop - 1}"
            _, shape = self._receive(doing)
            if tuple(shape) != (stop - start, self.size[1], self.size[0], 3):
                raise VideoError(
                    f"{self.path}: decord returned frames of shape {tuple(shape)[1:]}, the container says "
                    f"{self.size[0]}x{self.size[1]} RGB"
                )
            batch = np.empty(shape, np.uint8)
            self._guard(doing, lambda b=batch: decord_worker.receive_into(self._sock, memoryview(b)))
            if i + 1 < len(starts):
                self._request(starts[i + 1], min(starts[i + 1] + n, self.num_frames))
            yield batch
        self.log = scan.result()
        if len(self.log) != self.num_frames:
            raise VideoError(
                f"{self.path}: decord decoded {self.num_frames} frames, its PyAV damage and timing check "
                f"{len(self.log)}; set decode.backend: pyav to decode with PyAV alone"
            )

    def close(self) -> None:
        # The child only reads the file, so killing it is safe; asking it to stop could block on a prefetched
        # batch that nobody will read.
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._sock.close()
        if self._scan is not None:
            self._scan.cancel()


# ---------------------------------------------------------------------------------------------------------
# Folders of frames


def natural_key(name: str) -> list:
    """Sort key that orders ``frame_2.png`` before ``frame_10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class FrameFolderSource(VideoSource):
    """Image files in a folder, in natural name order, read with OpenCV.

    Only files with an image suffix (``IMAGE_SUFFIXES``) count; hidden files and anything else are ignored.
    Every frame must have the same size. Grayscale frames are replicated to R=G=B, an alpha channel is
    dropped and 16-bit samples are rounded to 8 bits; ``conversions`` lists those applied (complete once the
    frames have been iterated). A folder carries no timing, so ``fps`` is given by the caller.
    """

    backend = FOLDER_BACKEND

    def __init__(self, path: Path, fps: float = DEFAULT_FOLDER_FPS) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.backend_version = cv2.__version__
        self.files = sorted(
            (p for p in self.path.iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=lambda p: natural_key(p.name),
        )
        if not self.files:
            raise VideoError(
                f"{self.path}: folder holds no frames (no {', '.join(sorted(IMAGE_SUFFIXES))} files)"
            )
        self.num_frames = len(self.files)
        self.log = FrameLog(self.fps)
        first, _ = self._read(self.files[0])
        self.size = (first.shape[1], first.shape[0])
        self.info = {"first_frame": self.files[0].name, "last_frame": self.files[-1].name}

    def _read(self, file: Path) -> tuple[np.ndarray, set[str]]:
        image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise VideoError(f"{file}: cannot read this image (corrupt, truncated or unsupported format)")
        notes = set()
        if image.dtype == np.uint16:
            # Exact rounding of 0..65535 to 0..255.
            image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
            notes.add("16-bit samples rounded to 8 bits")
        elif image.dtype != np.uint8:
            raise VideoError(f"{file}: unsupported sample type {image.dtype} (expected 8- or 16-bit images)")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            notes.add("grayscale replicated to R=G=B")
            return np.repeat(image[..., None], 3, axis=2), notes
        if image.shape[2] == 4:
            notes.add("alpha channel dropped")
            return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), notes
        if image.shape[2] == 3:
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), notes
        raise VideoError(f"{file}: unsupported number of channels {image.shape[2]}")

    def iter_batches(self, n: int) -> Iterator[np.ndarray]:
        width, height = self.size
        notes: set[str] = set()
        for start in range(0, len(self.files), n):
            files = self.files[start : start + n]
            batch = np.empty((len(files), height, width, 3), np.uint8)
            for i, file in enumerate(files):
                image, file_notes = self._read(file)
                if image.shape[:2] != (height, width):
                    raise VideoError(
                        f"{file}: frame is {image.shape[1]}x{image.shape[0]}, but {self.files[0].name} is "
                        f"{width}x{height}; every frame of a folder must have the same size"
                    )
                batch[i] = image
                notes |= file_notes
                self.log.coded += 1
                self.log.add((start + i) / self.fps)
            self.conversions = tuple(sorted(notes))
            yield batch
