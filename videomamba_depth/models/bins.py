"""ZoeDepth's metric bins head (``model.head: zoe_bins``): depth as the expectation over adaptive bin centres.

After ZoeDepth (Bhat et al., 2023, "ZoeDepth: Zero-shot Transfer by Combining Relative and Metric Depth";
``isl-org/ZoeDepth``: ``zoedepth/models/layers/localbins_layers.py``, ``attractor.py``, ``dist_layers.py``
and ``zoedepth/models/zoedepth/zoedepth_v1.py``), re-implemented on the student's DPT decoder:

1. **Seed bins** (:class:`SeedBins`) from the decoder's coarsest projected features (the bottleneck): per cell
   ``n_bins`` centres, either ``normed`` (positive widths normalised to sum to ``max_depth - min_depth``;
   centres are the midpoints of the cumulative edges, so they lie in ``(min_depth, max_depth)``, ascending)
   or ``softplus`` (unbounded positive centres).
2. **Attractors** (:class:`AttractorLayer`), one layer per fused decoder scale, coarse to fine
   (``n_attractors`` points each, e.g. ``[16, 8, 4, 1]``): each predicts attractor points ``a_k`` and moves
   every centre ``c`` by the mean over ``k`` of ``f(a_k - c)``, with ``inv``:
   ``f(dx) = dx / (1 + alpha |dx|^gamma)`` or ``exp``: ``f(dx) = exp(-alpha |dx|^gamma) dx``
   (:func:`attract`). Both move ``c`` towards ``a_k`` without passing it. ``normed`` attractors work in
   ``[0, 1]`` (the range ``min_depth..max_depth`` rescaled) with linearly normalised points
   ``a = p / (p + q)``, ``softplus`` ones in metres with softplus points. ``bin_centers_type`` pairs the two:
   ``normed`` (normed seed + normed attractors), ``softplus`` (both softplus), ``hybrid1`` (normed seed,
   softplus attractors), ``hybrid2`` (softplus seed, normed attractors), as in ZoeDepth.
3. **Conditional log-binomial** (:class:`ConditionalLogBinomial`) on the head's stride-2 features and the last
   bin embedding: a success probability ``p`` and a temperature ``t`` per pixel give bin probabilities
   ``softmax_k((log C(K-1, k) + k log p + (K-1-k) log(1-p)) / t)``: a unimodal distribution over the ordered
   bins (a binomial, sharpened or flattened by ``t``), which the paper found better than a free softmax.
4. Depth = ``sum_k P_k c_k`` (the final centres resampled bilinearly to the stride-2 grid), returned as its
   log, so the student's canonical-focal scaling and clamp apply unchanged. The bins are canonical-focal
   metres: ``min_depth``, ``max_depth`` and the centres are depths at the canonical focal, before the
   ``f / f_c`` factor.

Where this deliberately differs from the ZoeDepth code (same maths as the paper describes):

- attraction is the mean over attractors (ZoeDepth's released configs use ``attractor_kind: mean``; the sum
  can overshoot): every ``c + f(a_k - c)`` lies between ``c`` and ``a_k``, so their mean keeps positive
  centres positive, and ``[0, 1]`` centres inside ``[0, 1]``;
- normed attractor points are the normalised ``p / (p + q)`` the code comments intend (the released code
  computes the normalisation, then indexes the raw activations);
- ``|dx|^gamma`` instead of ``dx^gamma``, the same for ZoeDepth's even gamma and well defined for odd ones;
- the exact ``lgamma`` binomial coefficient instead of Stirling's approximation (a constant, so it costs
  nothing), and the final centres are sorted ascending before the expectation for every bin type (the
  log-binomial is unimodal over bin indices, which is unimodal over depth only when the centres are ordered;
  ZoeDepth sorts only normed centres). ``align_corners=False`` resampling, like the rest of the student.

Numerics: the whole head runs in fp32 (an autocast-free island): ``(K-1) log p`` terms reach hundreds, so
bf16's 8 mantissa bits would scramble the probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

if TYPE_CHECKING:
    from videomamba_depth.models.student import ModelConfig

# Bin-centre parametrisations of (seed, attractors), by ``ModelConfig.bin_centers_type`` (ZoeDepth's pairing).
BIN_CENTERS_TYPES: dict[str, tuple[Literal["normed", "softplus"], Literal["normed", "softplus"]]] = {
    "normed": ("normed", "normed"),
    "softplus": ("softplus", "softplus"),
    "hybrid1": ("normed", "softplus"),
    "hybrid2": ("softplus", "normed"),
}
ATTRACTOR_TYPES = ("inv", "exp")
# Added to ReLU outputs before a linear normalisation x / sum(x), so the sum is never 0 (ZoeDepth: 1e-3).
NORM_EPS = 1e-3
# Floor of p and 1 - p in the log-binomial (log 0) and of the temperature logits (ZoeDepth: 1e-4).
P_EPS = 1e-4
# Temperature range of the output distribution (ZoeDepth's released config: 0.0212 .. 50).
MIN_TEMP, MAX_TEMP = 0.0212, 50.0


def conv_mlp(
    in_channels: int, hidden: int, out_channels: int, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Per-pixel MLP: ``1x1 conv -> act -> 1x1 conv`` (ZoeDepth's projector and regressor body)."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 1), act(), nn.Conv2d(hidden, out_channels, 1))


def linear_normalize(x: Tensor, dim: int) -> Tensor:
    """``(relu(x) + eps) / sum(relu(x) + eps)`` along ``dim``: positive values summing to 1 (ZoeDepth's
    "linear norm", an alternative to softmax that keeps the activations' scale)."""
    x = F.relu(x) + NORM_EPS
    return x / x.sum(dim=dim, keepdim=True)


def centers_from_widths(widths: Tensor, min_depth: float, max_depth: float) -> Tensor:
    """Bin centres from normalised widths: ``(F, K, h, w)`` summing to 1 over K -> ``(F, K, h, w)`` centres.

    Edges are ``min_depth + (max_depth - min_depth) * cumsum(widths)`` (starting at ``min_depth``), centres
    the midpoints of consecutive edges: ascending, inside ``(min_depth, max_depth)``.
    """
    edges = min_depth + (max_depth - min_depth) * torch.cumsum(F.pad(widths, (0, 0, 0, 0, 1, 0)), dim=1)
    return 0.5 * (edges[:, :-1] + edges[:, 1:])


def attract(
    centers: Tensor, attractors: Tensor, kind: Literal["inv", "exp"], alpha: float, gamma: int
) -> Tensor:
    """Centres ``(F, K, h, w)`` moved by attractor points ``(F, A, h, w)`` (same units): each centre ``c``
    becomes ``c + mean_a f(a - c)`` (module docstring for ``f``)."""
    dx = rearrange(attractors, "f a h w -> f a 1 h w") - rearrange(centers, "f k h w -> f 1 k h w")
    strength = alpha * dx.abs().pow(gamma)
    shift = dx / (1.0 + strength) if kind == "inv" else torch.exp(-strength) * dx
    return centers + shift.mean(dim=1)


def log_binomial_probs(p: Tensor, t: Tensor, n_bins: int) -> Tensor:
    """Bin probabilities ``(F, K, h, w)`` from success probability ``p`` ``(F, h, w)`` in (0, 1) and
    temperature ``t`` ``(F, h, w)`` > 0: ``softmax_k((log C(K-1, k) + k log p + (K-1-k) log(1-p)) / t)``,
    K = ``n_bins``.

    At ``t = 1`` this is exactly Binomial(K-1, p), whose mode is bin ``floor(K p)``; the temperature sharpens
    (< 1) or flattens (> 1) it around the same mode.
    """
    k = torch.arange(n_bins, device=p.device, dtype=torch.float32)[:, None, None]
    n = float(n_bins - 1)
    log_coef = math.lgamma(n + 1.0) - torch.lgamma(k + 1.0) - torch.lgamma(n - k + 1.0)
    p = p[:, None]
    logits = (
        log_coef + k * torch.log(p.clamp(P_EPS, 1.0)) + (n - k) * torch.log((1.0 - p).clamp(P_EPS, 1.0))
    )
    return torch.softmax(logits / t[:, None], dim=1)


class SeedBins(nn.Module):
    """Initial bin centres from the bottleneck features: ``(F, C, h, w)`` -> ``(F, K, h, w)`` in metres.

    Args:
        in_channels: C.
        hidden: hidden width of the regressor MLP.
        n_bins: K.
        kind: ``normed`` (:func:`centers_from_widths`, in ``(min_depth, max_depth)``) or ``softplus``.
        min_depth, max_depth: the normed range, metres at the canonical focal.
    """

    def __init__(
        self, in_channels: int, hidden: int, n_bins: int, kind: str, min_depth: float, max_depth: float
    ) -> None:
        super().__init__()
        self.kind, self.min_depth, self.max_depth = kind, min_depth, max_depth
        self.mlp = conv_mlp(in_channels, hidden, n_bins)

    def forward(self, x: Tensor) -> Tensor:
        out = self.mlp(x)
        if self.kind == "softplus":
            return F.softplus(out)
        return centers_from_widths(linear_normalize(out, dim=1), self.min_depth, self.max_depth)


class AttractorLayer(nn.Module):
    """One refinement of the bin centres at one decoder scale.

    ``forward(embedding (F, E, h, w), previous embedding (F, E, h', w'), centres (F, K, h', w'))`` ->
    ``centres (F, K, h, w)``: the previous embedding is resampled to ``h x w`` and added (ZoeDepth's
    ``prev_b_embedding``), the centres too, then attracted (:func:`attract`) by ``n_attractors`` points.
    ``normed`` layers take and return centres in ``[0, 1]`` units of ``min_depth..max_depth``, ``softplus``
    ones metres.

    Args:
        embedding_dim: E (and the MLP's hidden width).
        n_attractors: attractor points per cell.
        kind: ``normed`` or ``softplus`` (how the points are parametrised, module docstring).
        attractor_type, alpha, gamma: :func:`attract`.
    """

    def __init__(
        self, embedding_dim: int, n_attractors: int, kind: str, attractor_type: Literal["inv", "exp"],
        alpha: float, gamma: int,
    ) -> None:
        super().__init__()
        self.n_attractors, self.kind = n_attractors, kind
        self.attractor_type, self.alpha, self.gamma = attractor_type, alpha, gamma
        # normed: two logits (p, q) per point for a = p / (p + q); softplus: one.
        self.mlp = conv_mlp(embedding_dim, embedding_dim, n_attractors * (2 if kind == "normed" else 1))

    def forward(self, embedding: Tensor, previous: Tensor, centers: Tensor) -> Tensor:
        size = embedding.shape[-2:]
        x = embedding + F.interpolate(previous, size=size, mode="bilinear", align_corners=False)
        out = self.mlp(x)
        if self.kind == "normed":
            points = linear_normalize(rearrange(out, "f (a two) h w -> f a two h w", two=2), dim=2)[:, :, 0]
        else:
            points = F.softplus(out)
        centers = F.interpolate(centers, size=size, mode="bilinear", align_corners=False)
        return attract(centers, points, self.attractor_type, self.alpha, self.gamma)


class ConditionalLogBinomial(nn.Module):
    """Per-pixel bin probabilities from features and the bin embedding: ``(F, C, h, w)``, ``(F, E, h, w)`` ->
    ``(F, K, h, w)`` (:func:`log_binomial_probs`; ``p`` and ``t`` linearly normalised from softplus pairs,
    ``t`` mapped to ``[MIN_TEMP, MAX_TEMP]``)."""

    def __init__(self, in_channels: int, embedding_dim: int, n_bins: int) -> None:
        super().__init__()
        self.n_bins = n_bins
        width = in_channels + embedding_dim
        self.mlp = nn.Sequential(conv_mlp(width, max(width // 2, 1), 4, act=nn.GELU), nn.Softplus())

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        out = self.mlp(torch.cat([x, embedding], dim=1)) + P_EPS
        p = out[:, 0] / (out[:, 0] + out[:, 1])
        t = MIN_TEMP + (MAX_TEMP - MIN_TEMP) * out[:, 2] / (out[:, 2] + out[:, 3])
        return log_binomial_probs(p, t, self.n_bins)


class ZoeBinsHead(nn.Module):
    """The decoder's output layer for ``head: zoe_bins``: canonical log depth as ``log sum_k P_k c_k``.

    ``forward(last, bottleneck, pyramid)`` (the interface of ``decoder.DepthDecoder``'s ``head_out``):
    ``last`` ``(F, head_width, H2, W2)`` the head's stride-2 features, ``bottleneck`` ``(F, C_32, h, w)`` the
    projected coarsest scale, ``pyramid`` the fused decoder features coarse to fine, one per attractor layer
    -> ``(F, 1, H2, W2)`` canonical log depth, fp32.

    Args:
        head_width: channels of ``last``.
        bottleneck_width: channels of ``bottleneck``.
        pyramid_widths: channels of the fused features, coarse to fine.
        n_bins, bin_centers_type, min_depth, max_depth, n_attractors, attractor_type, alpha, gamma,
            embedding_dim: ``ModelConfig``'s zoe fields.
    """

    def __init__(
        self,
        head_width: int,
        bottleneck_width: int,
        pyramid_widths: Sequence[int],
        *,
        n_bins: int,
        bin_centers_type: str,
        min_depth: float,
        max_depth: float,
        n_attractors: Sequence[int],
        attractor_type: Literal["inv", "exp"],
        alpha: float,
        gamma: int,
        embedding_dim: int,
    ) -> None:
        super().__init__()
        if len(n_attractors) != len(pyramid_widths):
            raise ValueError(f"{len(n_attractors)} attractor layers for {len(pyramid_widths)} decoder scales")
        seed_kind, self.attractor_kind = BIN_CENTERS_TYPES[bin_centers_type]
        self.min_depth, self.max_depth = min_depth, max_depth
        self.seed = SeedBins(bottleneck_width, embedding_dim, n_bins, seed_kind, min_depth, max_depth)
        self.seed_projector = conv_mlp(bottleneck_width, embedding_dim, embedding_dim)
        self.projectors = nn.ModuleList(conv_mlp(c, embedding_dim, embedding_dim) for c in pyramid_widths)
        self.attractors = nn.ModuleList(
            AttractorLayer(embedding_dim, n, self.attractor_kind, attractor_type, alpha, gamma)
            for n in n_attractors
        )
        self.probabilities = ConditionalLogBinomial(head_width, embedding_dim, n_bins)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, head_width: int, bottleneck_width: int, pyramid_widths: Sequence[int]
    ) -> ZoeBinsHead:
        return cls(
            head_width, bottleneck_width, pyramid_widths, n_bins=cfg.n_bins,
            bin_centers_type=cfg.bin_centers_type, min_depth=cfg.min_depth, max_depth=cfg.max_depth,
            n_attractors=cfg.n_attractors, attractor_type=cfg.attractor_type, alpha=cfg.attractor_alpha,
            gamma=cfg.attractor_gamma, embedding_dim=cfg.bin_embedding_dim,
        )

    def bins(self, last: Tensor, bottleneck: Tensor, pyramid: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Probabilities and ascending centres (canonical metres), both ``(F, K, H2, W2)``, fp32."""
        with torch.autocast(device_type=last.device.type, enabled=False):
            bottleneck = bottleneck.float()
            centers = self.seed(bottleneck)
            if self.attractor_kind == "normed":  # the attractors' [0, 1] units of min_depth..max_depth
                centers = (centers - self.min_depth) / (self.max_depth - self.min_depth)
            embedding = self.seed_projector(bottleneck)
            for projector, attractor, features in zip(self.projectors, self.attractors, pyramid, strict=True):
                previous, embedding = embedding, projector(features.float())
                centers = attractor(embedding, previous, centers)
            if self.attractor_kind == "normed":
                # Back to metres; the clip only acts on hybrid2's softplus seed, which may start outside.
                centers = (self.min_depth + (self.max_depth - self.min_depth) * centers).clamp(
                    self.min_depth, self.max_depth
                )
            size = last.shape[-2:]
            embedding = F.interpolate(embedding, size=size, mode="bilinear", align_corners=False)
            probs = self.probabilities(last.float(), embedding)
            # Resampling sorted centres keeps them sorted (bilinear weights are a convex combination).
            centers = F.interpolate(
                centers.sort(dim=1).values, size=size, mode="bilinear", align_corners=False
            )
            return probs, centers

    def forward(self, last: Tensor, bottleneck: Tensor, pyramid: Sequence[Tensor]) -> Tensor:
        probs, centers = self.bins(last, bottleneck, pyramid)
        with torch.autocast(device_type=last.device.type, enabled=False):
            # The floor only matters if every softplus centre underflowed to 0: log stays finite (the
            # student's DEPTH_RANGE clamp takes over) and its gradient defined.
            depth = (probs * centers).sum(dim=1, keepdim=True)
            return torch.log(depth.clamp_min(torch.finfo(torch.float32).tiny))
