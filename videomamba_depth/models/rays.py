"""Camera conditioning of the student: canonical-focal depth scaling and per-pixel ray embeddings.

Two mechanisms, following Metric3D (Yin et al., 2023: "canonical camera space") and UniDepth's camera-aware
features (Piccinelli et al., 2024):

1. Canonical focal scaling (:func:`canonical_log_scale`). An object of physical size ``S`` at depth ``Z``
   spans ``s = f * S / Z`` pixels with a focal length of ``f`` pixels. From the image alone a network can only
   read apparent sizes ``s``, so it is asked for the depth the object would have under a fixed canonical
   focal ``f_c``: ``Z_c = f_c * S / s``. The metric depth is then ``Z = f * S / s = Z_c * f / f_c``. Zooming
   in (larger ``f``) makes everything look larger, ``Z_c`` smaller, and the factor ``f / f_c`` restores the
   true depth: the network's target no longer depends on the field of view, and two videos of the same room
   with different focal lengths get the same metric depth. ``f`` is the focal in pixels of the frames the
   model receives (the K passed with them); with ``fx != fy`` we use ``sqrt(fx * fy)``.
2. Ray embeddings (:class:`RayFiLM`). Each feature cell gets the direction of its viewing ray in normalised
   camera coordinates, ``x = (u - cx) / fx``, ``y = (v - cy) / fy`` (skew included), and
   ``cos(theta) = 1 / sqrt(1 + x^2 + y^2)`` (the angle to the optical axis: the ratio of z-depth to the
   distance along the ray). A small MLP turns them into a FiLM (scale and shift) of the features, so the
   network knows the field of view and principal point: where the horizon and the floor should be, and how
   z-depth bends towards the image borders. Its last layer is zero-initialised, so a fresh model is purely
   canonical-scaled and learns how much to use the rays.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def focal_length(K: Tensor) -> Tensor:
    """Focal length in pixels ``sqrt(fx * fy)``: ``(..., 3, 3)`` -> ``(...)``, fp32."""
    K = K.float()
    return torch.sqrt(K[..., 0, 0] * K[..., 1, 1])


def canonical_log_scale(K: Tensor, canonical_focal: float) -> Tensor:
    """``log(f / f_c)``, the log-depth offset from canonical to metric depth: ``(..., 3, 3)`` -> ``(...)``."""
    return torch.log(focal_length(K) / canonical_focal)


def ray_features(K: Tensor, size: tuple[int, int], padded_size: tuple[int, int]) -> Tensor:
    """Viewing-ray features of the cells of a feature map: ``(F, 3, 3)`` -> ``(F, 3, h, w)``, fp32.

    The map of ``size = (h, w)`` tiles the padded input of ``padded_size = (H_p, W_p)`` pixels; cell
    ``(i, j)`` covers ``H_p / h`` x ``W_p / w`` pixels and its centre, in pixel coordinates whose integers are
    pixel centres (see ``videomamba_depth.camera``), is ``u = (j + 0.5) * W_p / w - 0.5`` (likewise ``v``):
    for a stride of 4, ``u = 4 j + 1.5``, the middle of pixels ``4j .. 4j + 3``. Padding is on the right and
    bottom only, so the input pixels keep their coordinates and ``K`` applies to the padded frame as is.

    Channels: ``x = (u - cx - skew * y) / fx``, ``y = (v - cy) / fy`` (normalised image coordinates, the
    tangents of the ray angles) and ``cos(theta) = 1 / sqrt(1 + x^2 + y^2)``.
    """
    h, w = size
    K = K.float()
    u = (torch.arange(w, device=K.device, dtype=torch.float32) + 0.5) * (padded_size[1] / w) - 0.5
    v = (torch.arange(h, device=K.device, dtype=torch.float32) + 0.5) * (padded_size[0] / h) - 0.5
    fx, fy, skew = K[:, 0, 0, None, None], K[:, 1, 1, None, None], K[:, 0, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    y = (v[None, :, None] - cy) / fy  # (F, h, 1)
    x = (u[None, None, :] - cx - skew * y) / fx  # (F, h, w)
    y = y.expand_as(x)
    cos = torch.rsqrt(1.0 + x.square() + y.square())
    return torch.stack([x, y, cos], dim=1)


class RayFiLM(nn.Module):
    """Feature-wise modulation by the viewing rays: ``feat * (1 + gamma(rays)) + beta(rays)``.

    ``gamma, beta = MLP(ray_features)`` with a 1x1-conv MLP (3 -> ``hidden`` -> 2C), zero-initialised output
    layer (a fresh module is the identity; its weights still get gradients, being the branch's last layer).

    Args:
        channels: feature channels C.
        hidden: hidden width of the MLP.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 2 * channels, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor, rays: Tensor) -> Tensor:
        """``features (F, C, h, w)``, ``rays (F, 3, h, w)`` from :func:`ray_features` -> ``(F, C, h, w)``."""
        gamma, beta = self.mlp(rays.to(features.dtype)).chunk(2, dim=1)
        return features * (1.0 + gamma) + beta
