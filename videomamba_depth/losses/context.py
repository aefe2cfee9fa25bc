"""Cross-context distillation of Distill Any Depth: crops of a batch of images, the local-global term and the
alignment of the student's features to a teacher's.

A *crop view* of an image is the pixels of a box, resized to the image's own size: the network sees the crop
zoomed in, with its intrinsics changed to match (:func:`crop_intrinsics`), so a metric model should predict
the same metric depth there. The pre-training loop uses one crop view per image for two terms:

- shared context: the student and the teacher both see the crop view; the student's prediction on it must
  match the teacher's under the hierarchical normalisation (``spatial.hdn_loss``);
- local-global (:func:`local_global_loss`): the teacher's prediction on the zoomed crop, with its finer
  detail, supervises the box of the student's prediction on the whole image, up to a scale and shift.

Reference: He et al., "Distill Any Depth: Distillation Creates a Stronger Monocular Depth Estimator" (2025),
cross-context distillation; Yang et al., "Depth Anything" (CVPR 2024), feature alignment to a frozen encoder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from videomamba_depth.losses.common import fp32_island
from videomamba_depth.losses.spatial import ssi_loss


def sample_boxes(
    rng: np.random.Generator, count: int, size: tuple[int, int], fraction: tuple[float, float]
) -> Tensor:
    """``count`` random boxes in an ``(H, W)`` image: ``(count, 4)`` int64 ``(top, left, height, width)``.

    Each box's sides are the image's times one fraction drawn uniformly from ``fraction`` (``(low, high)``
    in (0, 1]), rounded to whole pixels (at least 1), so a crop view keeps the image's aspect ratio; its
    position is uniform over the places it fits. Draws from ``rng`` only.
    """
    low, high = fraction
    height, width = size
    draws = torch.from_numpy(rng.random((count, 3)))
    side = low + (high - low) * draws[:, 0]
    box_h = (side * height).round().clamp(1, height).long()
    box_w = (side * width).round().clamp(1, width).long()
    top = (draws[:, 1] * (height - box_h + 1)).floor().long().clamp_max(height - box_h)
    left = (draws[:, 2] * (width - box_w + 1)).floor().long().clamp_max(width - box_w)
    return torch.stack([top, left, box_h, box_w], dim=1)


def crop_resize(x: Tensor, boxes: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Each image's box, resampled to ``size``.

    Args:
        x: ``(B, C, H, W)`` float.
        boxes: ``(B, 4)`` int ``(top, left, height, width)`` inside ``H x W``.
        size: ``(h, w)`` output size.
        mode: ``bilinear`` (pixel-area aligned: ``align_corners=False``, differentiable) or ``nearest`` (for
            masks and targets whose values must not mix across depth edges).

    Returns:
        ``(B, C, h, w)``.
    """
    align = False if mode == "bilinear" else None
    crops = [x[b : b + 1, :, t : t + h, left : left + w] for b, (t, left, h, w) in enumerate(boxes.tolist())]
    return torch.cat([F.interpolate(c, size=size, mode=mode, align_corners=align) for c in crops])


def crop_intrinsics(K: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Intrinsics ``(B, 3, 3)`` of images -> those of their crop views (:func:`crop_resize` to ``size``)."""
    out = K.clone()
    scale_y = size[0] / boxes[:, 2].to(K.dtype)
    scale_x = size[1] / boxes[:, 3].to(K.dtype)
    # Focal lengths and skew scale with the zoom.
    out[:, 0, 0] = K[:, 0, 0] * scale_x
    out[:, 0, 1] = K[:, 0, 1] * scale_x
    out[:, 1, 1] = K[:, 1, 1] * scale_y
    # Principal point: shift to the box's corner, then pixel-area-aligned resampling maps the centre of pixel
    # u to (u + 0.5) * s - 0.5.
    out[:, 0, 2] = (K[:, 0, 2] - boxes[:, 1].to(K.dtype) + 0.5) * scale_x - 0.5
    out[:, 1, 2] = (K[:, 1, 2] - boxes[:, 0].to(K.dtype) + 0.5) * scale_y - 0.5
    return out


def local_global_loss(
    global_pred: Tensor, boxes: Tensor, local_target: Tensor, local_valid: Tensor, *, trim: float = 0.0
) -> Tensor:
    """Local-global distillation: the boxes of the global prediction vs the predictions on their crop views.

    Each box of ``global_pred`` is resampled bilinearly to the crop view's grid (so gradients reach the
    global prediction's pixels), then compared with ``local_target`` after the per-view least-squares scale
    and shift in disparity of :func:`~videomamba_depth.losses.spatial.ssi_loss` (which
    :func:`~videomamba_depth.losses.spatial.scale_shift_lstsq` computes): a local prediction carries detail,
    but its scale and shift, seen without the whole scene, are not to be trusted. 0 when every local target's
    disparity is a positive affine map of its resampled global box.

    Args:
        global_pred: ``(B, H, W)`` depth on the whole images, metres.
        boxes: ``(B, 4)`` int ``(top, left, height, width)`` of the crop views in ``global_pred``.
        local_target: ``(B, h, w)`` depth predicted on the crop views, metres.
        local_valid: ``(B, h, w)`` bool validity of ``local_target``.
        trim: fraction of the largest residuals dropped per view (``ssi_loss``'s).

    Returns:
        0-dim fp32 tensor (dimensionless), 0 when no pixel is valid.
    """
    with fp32_island(global_pred.device):
        crop = crop_resize(global_pred.float()[:, None], boxes, tuple(local_target.shape[-2:]), "bilinear")
        return ssi_loss(crop, local_target[:, None], local_valid[:, None], trim=trim)


def feature_alignment_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over positions of ``1 - cos(student, teacher)`` along channels.

    Args:
        student: ``(F, C, h', w')`` student features, already projected to the teacher's ``C`` channels;
            resampled bilinearly to ``(h, w)`` when the encoders' strides give other sizes.
        teacher: ``(F, C, h, w)`` teacher features (treat as constants: pass them detached).

    Returns:
        0-dim fp32 tensor in [0, 2]: 0 for parallel features, 1 for orthogonal ones.
    """
    with fp32_island(student.device):
        student = student.float()
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        return (1.0 - F.cosine_similarity(student, teacher.float(), dim=1)).mean()
