"""The targets of pre-training (``pretrain.teacher``): ground truth, or a frozen image teacher's predictions.

A teacher maps a :class:`View` (a batch of whole images, or of their crop views) to a :class:`Target`:

- ``none`` (:class:`GroundTruth`): the datasets' ground-truth depth and validity, as they are;
- ``synthetic`` (:class:`SyntheticImageTeacher`): ground truth corrupted the way a per-frame network errs,
  by the video pipeline's synthetic teacher (:func:`~videomamba_depth.teacher.synthetic.corrupt_image`);
- ``unidepth`` (:class:`UniDepthImageTeacher`): UniDepthV2 (optional package: one guarded import);
- ``student:<path>`` (:class:`StudentImageTeacher`): a saved student of this family (e.g. a bigger one,
  distilled into a smaller one), frozen; it also exposes its features for feature alignment.

Network teachers are valid on the image (not its padding) where their depth is finite and inside
``teacher_settings``' ``[min_depth, max_depth]``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from videomamba_depth.errors import InputError
from videomamba_depth.losses import crop_intrinsics, crop_resize
from videomamba_depth.models import load_student
from videomamba_depth.pretraining.config import PretrainConfig
from videomamba_depth.provenance import file_sha256
from videomamba_depth.teacher.base import TeacherConfig
from videomamba_depth.teacher.synthetic import corrupt_image
from videomamba_depth.teacher.unidepth import UniDepthTeacher

# View numbers in the seeds of a view's images: the whole image and its crop view draw different corruptions.
WHOLE_VIEW, CROP_VIEW = 0, 1


@dataclass(frozen=True)
class View:
    """A batch of ``B`` images as the student sees them, with what a teacher may read.

    Attributes:
        rgb: ``(B, 3, H, W)`` uint8.
        K: ``(B, 3, 3)`` intrinsics in pixels of these images.
        depth: ``(B, H, W)`` ground-truth depth, metres (0 where invalid).
        valid: ``(B, H, W)`` bool, ground-truth validity.
        image: ``(B, H, W)`` bool, True on the image, False on padding.
        seeds: per image, integers naming it and the view (dataset, index, view number), so that a teacher
            that draws randomness gives the same image and view the same target every time.
    """

    rgb: Tensor
    K: Tensor
    depth: Tensor
    valid: Tensor
    image: Tensor
    seeds: tuple[tuple[int, ...], ...]

    def crop(self, boxes: Tensor) -> View:
        """The crop views of ``boxes`` ``(B, 4)`` (``(top, left, height, width)``), each zoomed to ``H x W``:
        rgb bilinearly, depth and masks by nearest pixel (no mixing across depth edges), K to match."""
        size = tuple(self.rgb.shape[-2:])
        rgb = crop_resize(self.rgb.float(), boxes, size, "bilinear").round().clamp(0, 255).to(torch.uint8)

        def nearest(x: Tensor) -> Tensor:
            return crop_resize(x[:, None].float(), boxes, size, "nearest")[:, 0]

        return View(
            rgb=rgb,
            K=crop_intrinsics(self.K, boxes, size),
            depth=nearest(self.depth),
            valid=nearest(self.valid) > 0.5,
            image=nearest(self.image) > 0.5,
            seeds=tuple((*seed[:-1], CROP_VIEW) for seed in self.seeds),
        )


class Target(NamedTuple):
    """A teacher's output for a :class:`View`: ``depth`` ``(B, H, W)`` metres, ``valid`` ``(B, H, W)`` bool,
    and ``features`` ``(B, C, h, w)`` at the requested scale (None unless requested)."""

    depth: Tensor
    valid: Tensor
    features: Tensor | None = None


class ImageTeacher(abc.ABC):
    """A frozen source of targets for pre-training (module docstring)."""

    #: Whether :meth:`__call__` can return features (``loss.feature_align`` needs them).
    has_features: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, view: View, *, features: bool = False) -> Target:
        """The targets of ``view``; with ``features``, also the teacher's features (:attr:`has_features`)."""

    def identity(self) -> str | None:
        """What the run's results depend on beyond the params (a weights file's sha256), or None."""
        return None


class GroundTruth(ImageTeacher):
    """``teacher: none``: the ground truth of the view, as it is."""

    def __call__(self, view: View, *, features: bool = False) -> Target:
        return Target(view.depth, view.valid)


class _NetworkTeacher(ImageTeacher):
    """A teacher whose depth is valid on the image where finite and inside ``[min_depth, max_depth]``."""

    def __init__(self, settings: TeacherConfig) -> None:
        self.min_depth, self.max_depth = settings.min_depth, settings.max_depth

    def _target(self, view: View, depth: Tensor, features: Tensor | None = None) -> Target:
        depth = depth.float()
        valid = view.image & torch.isfinite(depth) & (depth >= self.min_depth) & (depth <= self.max_depth)
        return Target(torch.where(valid, depth, 0.0), valid, features)


class SyntheticImageTeacher(_NetworkTeacher):
    """``teacher: synthetic``: each image's ground truth corrupted as one frame of a video of its own
    (:func:`~videomamba_depth.teacher.synthetic.corrupt_image`, ``teacher_settings``' ``synthetic_*`` and
    ``seed``); valid where the ground truth is. Meant for dense ground truth (the synthetic image set): its
    edge blur would mix the zeros of invalid pixels into their neighbours."""

    def __init__(self, settings: TeacherConfig) -> None:
        super().__init__(settings)
        self.settings = settings

    def __call__(self, view: View, *, features: bool = False) -> Target:
        gt, K = view.depth.cpu().numpy(), view.K.double().cpu().numpy()
        rgb = rearrange(view.rgb, "b c h w -> b h w c").cpu().numpy()
        depth = np.stack([
            corrupt_image(g, k, self.settings, seed, image)[0]
            for g, k, seed, image in zip(gt, K, view.seeds, rgb, strict=True)
        ])
        target = self._target(view, torch.from_numpy(depth).to(view.depth.device))
        valid = target.valid & view.valid
        return Target(torch.where(valid, target.depth, 0.0), valid)


class UniDepthImageTeacher(_NetworkTeacher):
    """``teacher: unidepth``: UniDepthV2 (``teacher_settings``' ``weights``, ``resolution_level``, ``device``)
    on the view's images with their K."""

    def __init__(self, settings: TeacherConfig) -> None:
        super().__init__(settings)
        self.model = UniDepthTeacher.load(settings, "pretrain.teacher_settings.device")

    def __call__(self, view: View, *, features: bool = False) -> Target:
        rgb = view.rgb.permute(0, 2, 3, 1).cpu().numpy()
        out = self.model.predict(rgb, view.K.double().cpu().numpy(), np.arange(len(rgb)))
        return self._target(view, torch.from_numpy(out.depth).to(view.depth.device))


class StudentImageTeacher(_NetworkTeacher):
    """``teacher: student:<path>``: a saved student (:func:`~videomamba_depth.models.load_student`), frozen,
    on ``device``; its features are those of :meth:`~VideoMambaDepth.forward_frames_with_features`."""

    has_features = True

    def __init__(self, path: Path, settings: TeacherConfig, device: torch.device, feature_scale: str) -> None:
        super().__init__(settings)
        if path.suffix != ".safetensors" or not path.is_file():
            raise InputError(f"{path}: pretrain.teacher names no such student file (.safetensors, saved by "
                             "save_student: a pretrain or train model)")
        # The temporal blocks are bypassed, so how they would run does not matter: never need mamba-ssm.
        self.model = load_student(path, map_location=device, overrides={"ssm_backend": "torch"})
        self.model.requires_grad_(False)
        self.digest = file_sha256(path)
        self.feature_scale = feature_scale
        self.channels = self.model.encoder.channels[feature_scale]

    def __call__(self, view: View, *, features: bool = False) -> Target:
        with torch.no_grad():
            depth, per_scale = self.model.forward_frames_with_features(view.rgb, view.K)
        return self._target(view, depth, per_scale[self.feature_scale].float() if features else None)

    def identity(self) -> str:
        return self.digest


def build_image_teacher(config: PretrainConfig, device: torch.device) -> ImageTeacher:
    """The teacher of ``config.teacher`` (module docstring)."""
    settings, student = config.teacher_settings, config.student_teacher
    if student is not None:
        return StudentImageTeacher(Path(student), settings, device, config.loss.feature_align_scale)
    if config.teacher == "synthetic":
        return SyntheticImageTeacher(settings)
    if config.teacher == "unidepth":
        return UniDepthImageTeacher(settings)
    return GroundTruth()
