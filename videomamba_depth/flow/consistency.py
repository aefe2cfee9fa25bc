"""Forward–backward flow consistency (occlusion) masks.

Criterion of Sundaram, Brox & Keutzer (ECCV 2010): a pixel x of frame t is consistent when the backward flow
at its forward target cancels its forward flow, up to a tolerance that grows with the motion::

    |f(x) + b(x + f(x))|² < alpha · (|f(x)|² + |b(x + f(x))|²) + beta

with ``b`` sampled bilinearly at the sub-pixel target. Pixels whose target leaves the image region (or lands
in padding), or that are themselves padding, are inconsistent: their correspondence cannot be checked.
"""

from __future__ import annotations

import cv2
import numpy as np


def sample_bilinear(field: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample ``field`` ``(H, W, C)`` at sub-pixel ``coords`` ``(H', W', 2)`` (u, v) -> ``(H', W', C)``.

    Coordinates are pixel centres; outside the image the border value is replicated (callers mask those
    pixels). cv2.remap quantises the sampling position to 1/32 px, far below flow accuracy.
    """
    return cv2.remap(
        field.astype(np.float32, copy=False),
        coords[..., 0].astype(np.float32),
        coords[..., 1].astype(np.float32),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    ).reshape(*coords.shape[:2], field.shape[-1])


def target_inside(flow: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the forward target ``x + flow(x)`` of each pixel lies on a True pixel of ``region``.

    ``flow`` is ``(H, W, 2)``; ``region`` ``(H, W)`` bool (image pixels, False on padding). The target must
    lie within the pixel-centre hull [0, W-1] x [0, H-1] (where bilinear sampling needs no extrapolation)
    and its nearest pixel must be in ``region``.
    """
    h, w = region.shape
    v, u = np.mgrid[0:h, 0:w]
    tu, tv = u + flow[..., 0], v + flow[..., 1]
    inside = (tu >= 0) & (tu <= w - 1) & (tv >= 0) & (tv <= h - 1)
    iu = np.clip(np.rint(tu), 0, w - 1).astype(np.intp)
    iv = np.clip(np.rint(tv), 0, h - 1).astype(np.intp)
    return inside & region[iv, iu]


def forward_backward_consistency(
    flow_fwd: np.ndarray,
    flow_bwd: np.ndarray,
    region: np.ndarray,
    alpha: float,
    beta: float,
) -> np.ndarray:
    """``(H, W)`` bool: frame-t pixels whose forward flow is confirmed by the backward flow.

    ``flow_fwd`` ``(H, W, 2)`` maps frame t to t+1, ``flow_bwd`` ``(H, W, 2)`` maps t+1 to t (both pixels);
    ``region`` ``(H, W)`` bool marks image pixels (padding False); ``alpha`` (unitless) and ``beta`` (px²) are
    the relative and absolute tolerances of the criterion above. Non-finite flow is inconsistent.
    """
    h, w = region.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    target = np.stack([u + flow_fwd[..., 0], v + flow_fwd[..., 1]], axis=-1)
    finite = np.isfinite(flow_fwd).all(-1)
    target[~finite] = 0.0
    b_at_target = sample_bilinear(flow_bwd, target)
    # fp32 is ample here: squared magnitudes of flows up to a few hundred px.
    residual = np.sum((flow_fwd + b_at_target) ** 2, axis=-1)
    bound = alpha * (np.sum(flow_fwd**2, axis=-1) + np.sum(b_at_target**2, axis=-1)) + beta
    ok = finite & np.isfinite(b_at_target).all(-1) & (residual < bound)
    return ok & region & target_inside(np.where(finite[..., None], flow_fwd, 0.0), region)
