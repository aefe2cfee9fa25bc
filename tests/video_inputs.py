"""Tiny synthetic inputs for the decode / prepare / inspect tests: videos, frame folders, stores."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from videomamba_depth.camera import make_K
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.zarrio import TimeWriter, create_time_array, writing_store

T, H, W = 10, 48, 64


def smooth_frames(num_frames: int = T, height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: smooth colour gradients drifting over time (H.264 keeps them well)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for t in range(num_frames):
        channels = [
            128 + 90 * np.sin(2 * np.pi * (u + 1.5 * t) / width + phases[0]) * np.cos(2 * np.pi * v / height),
            128 + 90 * np.cos(2 * np.pi * (v - t) / height + phases[1]),
            128 + 90 * np.sin(2 * np.pi * (u + v + 2 * t) / (width + height) + phases[2]),
        ]
        frames.append(np.stack(channels, axis=-1))
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


def write_video(path: Path, frames: np.ndarray | None = None, fps: int = 10) -> Path:
    """H.264 mp4 (the project's writer), index at the end of the file."""
    write_mp4(path, smooth_frames() if frames is None else frames, fps=fps)
    return path


def write_with_pyav(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 10,
    options: dict | None = None,
    rotation: int = 0,
) -> Path:
    """Any codec/container PyAV can write: odd sizes (ffv1), grayscale, faststart mp4, rotation metadata."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate(path: Path, out: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of a file's bytes (a download or recording cut short)."""
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def tiny_K(width: int = W, height: int = H) -> np.ndarray:
    return make_K(0.9 * width, 0.92 * width, (width - 1) / 2 + 0.7, (height - 1) / 2 - 0.4)


def write_frames_store(
    path: Path, frames: np.ndarray, K: np.ndarray | None = None, fps: float = 10.0
) -> Path:
    """A ``frames`` store as the decode stage writes it, straight from arrays (no video coding loss)."""
    attrs = {
        "fps": fps,
        "vfr": False,
        "corrupt_frames": 0,
        "original_size": [frames.shape[2], frames.shape[1]],
        "num_frames": len(frames),
        "intrinsics": "missing" if K is None else "given",
    }
    with writing_store(path, "frames", attrs) as group:
        rgb = create_time_array(group, "rgb", frames.shape[1:], "uint8", dims=("t", "y", "x", "c"),
                                units="sRGB", description="frames")
        with TimeWriter(rgb) as writer:
            writer.append(frames)
        for name, values, units in (("timestamps", np.arange(len(frames)) / fps, "s"),
                                    ("corrupt", np.zeros(len(frames), bool), "bool")):
            array = create_time_array(group, name, (), values.dtype, dims=("t",), units=units,
                                      description=name)
            with TimeWriter(array) as writer:
                writer.append(values)
        if K is not None:
            k = create_time_array(group, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
                                  description="K")
            with TimeWriter(k) as writer:
                writer.append(np.broadcast_to(K, (len(frames), 3, 3)) if K.ndim == 2 else K)
    return path


def write_gt_store(path: Path, num_frames: int = T, height: int = H, width: int = W) -> dict[str, np.ndarray]:
    """A ``ground_truth`` store with the synth schema; depth encodes the pixel: 1 + u + 100 v + 10000 t.

    Needs W < 100.

    Returns the arrays written.
    """
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    depth = 1.0 + u + 100.0 * v + 10000.0 * t  # integers: exact in float32
    flow = np.zeros((num_frames - 1, height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0 + u / 10.0, -1.0
    pose = np.tile(np.eye(4), (num_frames, 1, 1))
    pose[:, 0, 3] = np.arange(num_frames) * 0.1
    arrays = {
        "depth": depth,
        "pose_c2w": pose,
        "K": np.broadcast_to(tiny_K(width, height), (num_frames, 3, 3)).copy(),
        "flow_fwd": flow,
        "flow_fwd_valid": np.broadcast_to(u < width - 3, (num_frames - 1, height, width)).copy(),
        "motion_mask": np.broadcast_to((u > 10) & (u < 20) & (v > 5), (num_frames, height, width)).copy(),
    }
    dims = {"depth": ("t", "y", "x"), "pose_c2w": ("t", "i", "j"), "K": ("t", "i", "j"),
            "flow_fwd": ("t", "y", "x", "c"), "flow_fwd_valid": ("t", "y", "x"),
            "motion_mask": ("t", "y", "x")}
    units = {"depth": "m", "pose_c2w": "m", "K": "pixels", "flow_fwd": "pixels", "flow_fwd_valid": "bool",
             "motion_mask": "bool"}
    attrs = {"fps": 10.0, "size": [width, height], "num_frames": num_frames, "seed": 0}
    with writing_store(path, "ground_truth", attrs) as group:
        for name, values in arrays.items():
            array = create_time_array(group, name, values.shape[1:], values.dtype, dims=dims[name],
                                      units=units[name], description=name)
            with TimeWriter(array) as writer:
                writer.append(values)
    return arrays


def store_files(path: Path) -> list[str]:
    """Relative paths of every file of a store."""
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())


def leftovers(directory: Path, name: str) -> list[str]:
    """Anything named like ``name`` or its temporary copies in ``directory``."""
    return sorted(p.name for p in Path(directory).glob(f"{name}*"))


def write_avi(
    path: Path, frames: np.ndarray, *, pts: list[int] | None = None, fps: int = 15, gop: int = 12
) -> Path:
    """MPEG-4 part 2 in AVI (as old cameras and screen recorders write), keyframes every ``gop`` frames.

    With ``pts`` (increasing frame numbers at ``fps``), frames are shown at those times: the AVI muxer fills
    the gaps with empty "repeat the previous frame" index entries (variable frame timing in a CFR container).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        for t, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = t if pts is None else pts[t]
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corrupt_packets(path: Path, packets: list[int], seed: int = 0, *, whole: bool = False) -> Path:
    """Overwrite the middle third of the given packets (decode order) with random bytes, in place.

    The container stays intact (every packet where the index says); the decoder meets damaged slices and
    conceals them: green blocks and smearing that last until the next keyframe. With ``whole``, the packets
    are zeroed entirely: the decoder rejects them as invalid data and their frames are missing.
    """
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in packets:
        pos, size = spans[i]
        if whole:
            data[pos : pos + size] = bytes(size)
            continue
        start, length = pos + size // 3, max(4, size // 3)
        data[start : start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def decode_all(path: Path) -> np.ndarray:
    """Every frame of a video as ``(T, H, W, 3)`` uint8, decoded plainly by PyAV (a reference)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
