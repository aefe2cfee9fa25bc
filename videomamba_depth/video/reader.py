"""Streaming video sources: decord, PyAV and folders of frames behind one interface.

:func:`open_video` returns a :class:`VideoSource` whose :meth:`~VideoSource.iter_batches` yields
``(n, H, W, 3)`` uint8 RGB batches, so a long or high-resolution video is never held in memory whole. The
backend is an explicit choice (``decode.backend``); one never silently replaces the other.

Checks shared by both video backends come from one PyAV probe (:func:`probe_video`): a video stream exists,
the first frame decodes, the frame rate is known, and the declared frame count (to detect truncated files).

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
    expected_exact: bool  # expected_frames comes from a frame index (mp4/mov), not a duration estimate


class VideoSource:
    """A stream of RGB frames. Use as a context manager; iterate once with :meth:`iter_batches`.

    Attributes: ``path``, ``backend`` and ``backend_version``; ``num_frames`` (None when the container does
    not say, e.g. PyAV on Matroska); ``fps``; ``size`` (W, H) of the frames yielded; ``conversions``, the
    documented conversions applied to reach 8-bit RGB (grayscale replicated, alpha dropped, ...);
    ``info``, extra facts about the source (codec, pixel format, rotation) for the store attributes.
    """

    path: Path
    backend: str
    backend_version: str
    num_frames: int | None
    fps: float
    size: tuple[int, int]
    conversions: tuple[str, ...] = ()
    info: dict

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
            frames_in_index = stream.frames
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({_ffmpeg_message(exc)})") from exc
    if not rate or rate <= 0:
        raise VideoError(f"{path}: the container gives no frame rate")
    if rotation % 90:
        raise VideoError(f"{path}: unsupported rotation {rotation} degrees (only multiples of 90)")
    if rotation in (90, 270):
        width, height = height, width
    fps = float(Fraction(rate))
    if frames_in_index > 0:
        expected, exact = int(frames_in_index), True
    elif duration_s:
        expected, exact = round(duration_s * fps), False
    else:
        expected, exact = None, False
    return VideoProbe(codec, pixel_format, (width, height), fps, rotation, expected, exact)


def _ffmpeg_message(exc: av.error.FFmpegError) -> str:
    return exc.strerror or str(exc)


def _check_complete(path: Path, probe: VideoProbe, decoded: int) -> None:
    """Raise when fewer frames were decoded than the container declares (a truncated file)."""
    if probe.expected_frames is None:
        return
    slack = 0 if probe.expected_exact else max(
        _ESTIMATE_SLACK_FRAMES, round(_ESTIMATE_SLACK_FRACTION * probe.expected_frames)
    )
    if decoded < probe.expected_frames - slack:
        what = "indexes" if probe.expected_exact else "implies (duration x fps)"
        raise VideoError(
            f"{path}: truncated or corrupt video: the container {what} {probe.expected_frames} frames, "
            f"only {decoded} could be decoded"
        )


def _probe_info(probe: VideoProbe) -> dict:
    return {"codec": probe.codec, "pixel_format": probe.pixel_format, "rotation_degrees": probe.rotation}


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
        # Only a frame index is trusted as the frame count up front; a duration estimate is not.
        self.num_frames = self.probe.expected_frames if self.probe.expected_exact else None

    def iter_batches(self, n: int) -> Iterator[np.ndarray]:
        width, height = self.size
        decoded = 0
        batch = np.empty((n, height, width, 3), np.uint8)
        filled = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    if self.probe.rotation:
                        rgb = np.rot90(rgb, k=self.probe.rotation // 90)  # counter-clockwise, as PyAV reports
                    if rgb.shape != batch.shape[1:]:
                        raise VideoError(
                            f"{self.path}: frame {decoded} is {rgb.shape[1]}x{rgb.shape[0]}, the video "
                            f"started at {width}x{height} (size changes mid-stream are not supported)"
                        )
                    batch[filled] = rgb
                    filled += 1
                    decoded += 1
                    if filled == n:
                        yield batch
                        batch = np.empty((n, height, width, 3), np.uint8)
                        filled = 0
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"{self.path}: corrupt video data after frame {decoded} ({_ffmpeg_message(exc)})"
            ) from exc
        if filled:
            yield batch[:filled]
        _check_complete(self.path, self.probe, decoded)


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
        self.info = _probe_info(self.probe)
        self.stall_timeout_s = stall_timeout_s
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
            _check_complete(self.path, self.probe, self.num_frames)
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
            raise VideoError(f"{self.path}: decord failed while {doing}: {message[1]}")
        return message

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

    def close(self) -> None:
        # The child only reads the file, so killing it is safe; asking it to stop could block on a prefetched
        # batch that nobody will read.
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._sock.close()


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
            self.conversions = tuple(sorted(notes))
            yield batch
