"""Single-image metric depth with the streaming student: ``infer_image`` and ``videomamba-depth infer-image``.

An image is a one-frame video: it is read as a folder of frames is (``video.reader.FrameFolderSource``: 8-
or 16-bit, grey replicated, alpha dropped), prepared exactly as ``infer`` prepares each frame
(:func:`videomamba_depth.prepare.resize_pad` at the long edge and pad multiple recorded in the checkpoint, K
mapped by ``ResizePad.apply_K``), stepped once through a fresh :class:`StreamingDepth` (no state from
another image) and mapped back to the original pixels (:func:`.infer.to_original`). So the depth of an image
equals the first frame's depth of ``infer`` on a video that starts with it.

Intrinsics as for ``infer`` (:mod:`.intrinsics`): a ``.json``/``.npy`` file checked against the image size,
else ``hfov_deg``, else a UniDepthV2 estimate when installed, else ``DEFAULT_HFOV_DEG`` (60 degrees) with a
loud warning.

The command writes per image ``<stem>.npy`` (float32 metres), ``<stem>.png`` (the depth colour-mapped with
``viz.DEPTH_CMAP`` on its 1st-99th percentile) and with ``ply`` ``<stem>.ply``. All outputs are written under
temporary names and renamed only after every image succeeded: an error (a bad image among many) leaves
nothing new and every existing file as it was. Existing outputs are replaced only with ``force``; inputs,
folders and links never.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from tqdm import tqdm

from videomamba_depth.camera import IntrinsicsError, ResizePad, load_intrinsics, validate_K
from videomamba_depth.config import StageConfig
from videomamba_depth.devices import resolve_device
from videomamba_depth.inference.infer import (
    DEFAULT_LONG_EDGE,
    DEFAULT_PAD_MULTIPLE,
    InferError,
    default_threads,
    geometry_params,
    naming_output,
    to_original,
)
from videomamba_depth.inference.intrinsics import DEFAULT_UNIDEPTH_WEIGHTS, Intrinsics, estimated, load_given
from videomamba_depth.inference.ply import write_depth_points
from videomamba_depth.inference.predictor import StreamingDepth, load_checkpoint
from videomamba_depth.models import VideoMambaDepth
from videomamba_depth.prepare import resize_pad
from videomamba_depth.video.reader import FrameFolderSource
from videomamba_depth.viz import colorize, robust_range
from videomamba_depth.zarrio import atomic_file

# Output files per input image, by kind.
SUFFIXES = {"depth": ".npy", "png": ".png", "ply": ".ply"}


@dataclass(frozen=True)
class ImageFrame:
    """One image as the intrinsics helpers see a video (:class:`.intrinsics.Frames`): one frame."""

    path: Path
    size: tuple[int, int]
    num_frames: int = 1


def read_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file, converted as a folder of frames is (see the module doc)."""
    path = _existing_file(Path(path))
    # FrameFolderSource's per-file reader uses no instance state; calling it keeps one image reader. (Moving
    # it to a module-level function would change the decode stage's code hash, i.e. dvc.lock.)
    rgb, _ = FrameFolderSource._read(None, path)
    return rgb


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise InferError(f"{path}: image not found" if not path.exists() else f"{path}: not a file")
    return path


def image_intrinsics(
    frame: ImageFrame,
    rgb: np.ndarray,
    intrinsics: str | Path | np.ndarray | None,
    *,
    hfov_deg: float | None = None,
    unidepth_weights: str = DEFAULT_UNIDEPTH_WEIGHTS,
    device: str = "cpu",
) -> Intrinsics:
    """K ``(3, 3)`` of the original image and its source: an array (pixels), a ``.json``/``.npy`` file
    (checked against the image size; a per-frame file must hold one K), else as ``infer`` without a file."""
    if isinstance(intrinsics, np.ndarray):
        K = validate_K(intrinsics, "intrinsics")
        if K.shape != (3, 3):
            raise IntrinsicsError(f"intrinsics: expected a 3x3 K for one image, got shape {K.shape}")
        return Intrinsics(K, {"source": "given", "K": K.tolist()})
    if intrinsics is not None:
        given = load_given(intrinsics, frame)
        return Intrinsics(given.at(0), given.info)
    return estimated(frame, rgb[None], hfov_deg=hfov_deg, unidepth_weights=unidepth_weights, device=device)


def predict_image(
    model: VideoMambaDepth, rgb: np.ndarray, K: np.ndarray, long_edge: int, pad_multiple: int
) -> np.ndarray:
    """Depth ``(H, W)`` float32 metres of ``rgb`` ``(H, W, 3)`` uint8 with original-image ``K`` ``(3, 3)``,
    prepared at ``long_edge`` / ``pad_multiple`` as ``infer`` prepares a frame, with fresh states."""
    height, width = rgb.shape[:2]
    geometry = ResizePad.fit(width, height, long_edge, pad_multiple)
    prepared = resize_pad(rgb[None], geometry)[0]
    small = StreamingDepth(model)(prepared, geometry.apply_K(K))
    return to_original(small, geometry).astype(np.float32, copy=False)


def infer_image(
    model: VideoMambaDepth,
    image: str | Path | np.ndarray,
    intrinsics: str | Path | np.ndarray | None = None,
    *,
    hfov_deg: float | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Metric depth ``(H, W)`` float32 metres (z-depth) of one image at its original resolution.

    Args:
        model: the student, e.g. from :func:`.predictor.load_checkpoint`.
        image: an image file, or an ``(H, W, 3)`` uint8 RGB array.
        intrinsics: K of the original image: a ``(3, 3)`` array or a ``.json``/``.npy`` file (pixels); None:
            ``hfov_deg`` if given, else UniDepthV2 when installed, else 60 degrees with a warning.
        preprocessing: ``{"long_edge", "pad_multiple", ...}`` the model was trained with: pass
            ``load_checkpoint(path)[1]["preprocessing"]``. None (a file that does not record it): 224 / 14,
            with a warning, as ``infer`` does for such files.

    Example::

        model, info = load_checkpoint("data/train/model_best.safetensors")
        depth = infer_image(model, "photo.jpg", "K.json", preprocessing=info["preprocessing"])
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        rgb, frame = image, ImageFrame(Path("image"), (image.shape[1], image.shape[0]))
    else:
        rgb = read_image(image)
        frame = ImageFrame(Path(image), (rgb.shape[1], rgb.shape[0]))
    device = str(next(model.parameters()).device)
    K = image_intrinsics(frame, rgb, intrinsics, hfov_deg=hfov_deg, device=device)
    if preprocessing is None:
        print(f"warning: infer_image: no preprocessing given; assuming long_edge={DEFAULT_LONG_EDGE}, "
              f"pad_multiple={DEFAULT_PAD_MULTIPLE} as for model files that do not record theirs (pass "
              "preprocessing=load_checkpoint(path)[1]['preprocessing'])", file=sys.stderr)
        long_edge, pad_multiple = DEFAULT_LONG_EDGE, DEFAULT_PAD_MULTIPLE
    else:
        long_edge, pad_multiple = preprocessing["long_edge"], preprocessing["pad_multiple"]
    return predict_image(model, rgb, K.K, long_edge, pad_multiple)


@dataclass(frozen=True)
class InferImageConfig(StageConfig):
    """Settings of ``infer-image`` (command-line flags): ``device`` (``auto`` | ``cpu`` | ``cuda``),
    ``threads`` (torch threads; None: :func:`.infer.default_threads`), ``hfov_deg`` (no intrinsics file:
    assume this horizontal field of view), ``ply`` (also write point clouds), ``unidepth_weights``,
    ``long_edge`` / ``pad_multiple`` (None: the checkpoint's; given: used with a warning, as in ``infer``)."""

    long_edge: int | None = None
    pad_multiple: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    hfov_deg: float | None = None
    ply: bool = False
    unidepth_weights: str = DEFAULT_UNIDEPTH_WEIGHTS

    def __post_init__(self) -> None:
        if any(v is not None and v < 1 for v in (self.long_edge, self.pad_multiple, self.threads)):
            raise ValueError("long_edge, pad_multiple and threads must be >= 1")
        if self.hfov_deg is not None and not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {self.hfov_deg:g}")


@dataclass(frozen=True)
class InferImagesResult:
    """What ``infer_images`` wrote: the output files per input image, and images per second."""

    outputs: dict[Path, list[Path]]
    images_per_s: float


def output_paths(images: Sequence[Path], out_dir: Path, ply: bool) -> dict[Path, list[Path]]:
    """``<out_dir>/<stem>.npy``, ``.png`` (and ``.ply``) per image; two inputs of one stem are an error."""
    kinds = ["depth", "png"] + (["ply"] if ply else [])
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise InferError(f"{image}: same output name {image.stem!r} as {seen[image.stem]}; rename one "
                             "(outputs are named <stem>.npy/.png/.ply in --out)")
        seen[image.stem] = image
    return {image: [out_dir / f"{image.stem}{SUFFIXES[kind]}" for kind in kinds] for image in images}


def check_image_outputs(outputs: Mapping[Path, list[Path]], inputs: Sequence[Path], force: bool) -> None:
    """Refuse before anything is written: an output that is an input (image, model, K file), a folder or a
    link, or (without ``force``) any existing file. Raises a one-line :class:`.infer.InferError`."""
    protected = [p for p in inputs if p.exists()]
    for path in (p for paths in outputs.values() for p in paths):
        if any(path.resolve() == p.resolve() or (path.exists() and os.path.samefile(path, p))
               for p in protected):
            raise InferError(f"{path}: this output is one of the inputs; refusing to overwrite it "
                             "(choose another --out)")
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise InferError(f"{path}: exists and is not a plain file; refusing to replace it "
                             "(choose another --out)")
        if path.exists() and not force:
            raise InferError(f"{path}: exists; pass --force to replace it")


def infer_images(
    images: Sequence[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    config: InferImageConfig,
    *,
    intrinsics: str | Path | None = None,
    force: bool = False,
) -> InferImagesResult:
    """Depth of each image into ``out_dir`` (see the module docstring); one model load, a progress bar.

    Everything that can reject the inputs (missing images, duplicate output names, a bad intrinsics file,
    outputs that must not be replaced, the model file) is checked before any image is processed.
    """
    images, out_dir, checkpoint = [Path(p) for p in images], Path(out_dir), Path(checkpoint)
    if not images:
        raise InferError("no images given")
    for image in images:
        _existing_file(image)
    if out_dir.exists() and not out_dir.is_dir():
        raise InferError(f"{out_dir}: --out must be a folder, and this is a file")
    outputs = output_paths(images, out_dir, config.ply)
    inputs = [*images, checkpoint] + ([Path(intrinsics)] if intrinsics is not None else [])
    check_image_outputs(outputs, inputs, force)
    # A malformed K file fails here, before the model loads; its size is checked against each image.
    if intrinsics is not None and len(load_intrinsics(intrinsics).reshape(-1, 3, 3)) != 1:
        raise IntrinsicsError(f"{intrinsics}: per-frame intrinsics; an image needs one 3x3 K")
    device = resolve_device(config.device, "--device")
    created = not out_dir.exists()
    threads = config.threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, info = load_checkpoint(checkpoint, device)
        long_edge, pad_multiple = geometry_params(config.long_edge, config.pad_multiple,
                                                  info["preprocessing"], checkpoint)
        start = time.perf_counter()
        # Each output is entered here and renamed into place when the stack closes without an error, so an
        # error at any image removes every temporary file and replaces nothing.
        hfov_deg = config.hfov_deg
        with ExitStack() as stack:
            for image in tqdm(images, desc="infer-image", unit="image", file=sys.stderr):
                rgb = read_image(image)
                frame = ImageFrame(image, (rgb.shape[1], rgb.shape[0]))
                K = image_intrinsics(frame, rgb, intrinsics, hfov_deg=hfov_deg,
                                     unidepth_weights=config.unidepth_weights, device=str(device))
                if K.info["source"] == "hfov":  # the default assumption is warned about once, not per image
                    hfov_deg = K.info["hfov_deg"]
                depth = predict_image(model, rgb, K.K, long_edge, pad_multiple)
                for path in outputs[image]:
                    tmp = stack.enter_context(atomic_file(path))
                    with naming_output(path, "an output"):
                        _write(path.suffix, tmp, depth, rgb, K.K, image.name)
        elapsed = time.perf_counter() - start
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # the folder this run created, left empty by the error
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return InferImagesResult(outputs, len(images) / max(elapsed, 1e-9))


def _write(suffix: str, path: Path, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, name: str) -> None:
    if suffix == ".npy":
        with open(path, "wb") as f:
            np.save(f, depth)
    elif suffix == ".png":
        colours = colorize(depth, *robust_range(depth))
        if not cv2.imwrite(str(path), cv2.cvtColor(colours, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cv2 could not write the PNG")
    else:
        # The name goes into an ASCII header line: escaped, so any file name is safe there.
        write_depth_points(path, depth, rgb, K, f"image {name!a}")
