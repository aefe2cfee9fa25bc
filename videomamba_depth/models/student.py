"""The streaming student: per-frame encoder -> camera conditioning -> temporal SSM (coarse scales) -> decoder.

Data flow for a clip ``rgb (B, N, 3, H, W)``, ``K (B, N, 3, 3)``:

1. every frame, independently: normalise, pad to the encoder's multiple (``Encoder`` docstring), encode to
   scales ``s4, s8, s16, s32`` (strides 4-32), FiLM each scale by its viewing rays (``rays.RayFiLM``;
   ``camera: rays``, the default) or, with ``camera: tokens`` (timm ViT encoders), encode with camera tokens
   in the ViT's sequence (``camera_tokens.CameraEncoder``);
2. at the temporal scales (default ``s16``, ``s32``): ``TemporalFeatureMixer`` (``SpatialPreMix`` -> one token
   per position -> ``TemporalMambaScale`` along time -> back), the only place frames interact, causally;
   with ``global_scale_blocks`` > 0 also a global scale path: one token per frame (1x1 conv + GELU of the
   ``s32`` features, averaged over the map) through its own ``TemporalFeatureMixer`` (state name
   ``global_scale``), read out by a linear layer as a log-scale offset of the whole frame's depth, so evidence
   for the scene's metric scale gathered over past views can steady the present one, as streaming metric
   models do;
3. every frame, independently: DPT-style fusion and head (``decoder.DepthDecoder``; output layer ``head``:
   ``dpt`` or ZoeDepth's metric bins ``zoe_bins``) -> canonical log depth at stride 2 -> bilinear to the
   padded size -> crop to ``H x W`` -> ``+ log(f / f_c)`` (canonical focal scaling, ``rays`` docstring)
   ``+`` the global log-scale offset (if any) -> clamp to ``DEPTH_RANGE`` -> exp: metric z-depth in metres.

Because steps 1 and 3 are per frame and the temporal blocks are causal SSMs with carried states, ``forward``
on a whole clip, ``forward`` on consecutive pieces with the returned states, and ``step`` frame by frame give
the same depths (fp32, up to float rounding; ``tests/test_models.py``). Only per-frame normalisation is used
(GroupNorm, LayerNorm), so this also holds in train mode and for any batch composition.

A fresh model is a per-frame model: the temporal blocks' output projections and ``SpatialPreMix`` are
zero-initialised (the SSM core makes a fresh mixer exactly the identity), and so are the ray FiLMs, the
global scale readout and the ``dpt`` head's last conv, so it predicts ``init_depth * f / f_c`` everywhere
(``zoe_bins``: the expectation over its freshly initialised bins instead).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videomamba_depth.config import StageConfig
from videomamba_depth.models.bins import ATTRACTOR_TYPES, BIN_CENTERS_TYPES
from videomamba_depth.models.camera_tokens import CameraEncoder
from videomamba_depth.models.checkpoint import load_external_checkpoint
from videomamba_depth.models.decoder import HEADS, DepthDecoder
from videomamba_depth.models.encoders import ENCODERS, SCALES, CnnEncoder, TimmEncoder
from videomamba_depth.models.rays import RayFiLM, canonical_log_scale, ray_features
from videomamba_depth.models.states import StudentStates
from videomamba_depth.ssm import ScaleState, TemporalFeatureMixer, TemporalMambaScale

# Output depth range in metres (the final log depth is clamped to its logs before exp). Far outside any
# depth the teacher reports (0.01-1000 m), so the clamp never bends training targets; it keeps exp finite
# and the log losses defined if the network ever diverges.
DEPTH_RANGE = (1e-3, 1e4)

# Allowed range of every size in ``ModelConfig`` (inclusive). The upper bounds are far above any sensible
# student (ViT-g is 1536 channels wide, mamba_ssm's largest d_state 256, ResNet-152's longest stage 36
# blocks): a config beyond them is a typo or a crafted checkpoint header, rejected before anything is built.
SIZE_BOUNDS = {
    "widths": (1, 8192),
    "decoder_widths": (1, 8192),
    "head_width": (1, 8192),
    "ray_hidden": (1, 8192),
    "cnn_blocks": (0, 256),
    "temporal_blocks": (1, 256),
    "global_scale_blocks": (0, 256),
    "d_state": (1, 1024),
    "d_conv": (1, 64),
    "expand": (1, 64),
    "headdim": (1, 8192),
    "ffn_mult": (1, 64),
    "n_bins": (2, 1024),
    "bin_embedding_dim": (1, 8192),
    "n_attractors": (1, 1024),
    "attractor_gamma": (1, 16),
    "cam_tokens": (1, 256),
    "cam_blocks": (0, 64),
    "cam_token_inject_layer": (0, 1024),
}

# Camera conditioning variants (``ModelConfig.camera``): per-pixel ray FiLM, or camera tokens in a ViT; the
# state-dict prefixes of their parameters, and the config fields that describe them.
CAMERAS = ("rays", "tokens")
RAY_FILM_PREFIX, CAMERA_ENCODER_PREFIX = "rays.", "camera."
CAMERA_CONFIG_KEYS = ("camera", "ray_hidden", "cam_tokens", "cam_blocks", "cam_token_inject_layer")

# Parameters never weight-decayed besides biases and norm weights (all 1-D): the SSM's decay rates, skip
# and step-size biases (as in mamba_ssm's `_no_weight_decay`), ViT token/position embeddings and the camera
# encoder's learned token queries.
# Name of the global scale path's state in ``StudentStates`` (a pseudo-scale of 1 x 1 cells, next to the
# temporal feature scales) and the encoder scale whose features it pools.
GLOBAL, GLOBAL_SOURCE = "global_scale", "s32"

NO_DECAY_NAMES = frozenset(
    {"A_log", "D", "dt_bias", "pos_embed", "cls_token", "reg_token", "mask_token", "queries"}
)


@dataclass(frozen=True)
class ModelConfig(StageConfig):
    """Architecture of the student (params ``train.model.*``); stored with every saved model.

    Encoder:
        encoder: ``cnn`` (compact CNN from scratch) or ``timm`` (a timm backbone; needs ``timm``).
        widths: encoder channels at strides 4, 8, 16, 32 (the timm adapters map to these too).
        cnn_blocks: residual blocks per scale of the CNN encoder.
        timm_name: timm model name (e.g. ``vit_small_patch14_dinov2.lvd142m``, ``convnext_atto.d2_in1k``).
        timm_out_indices: the 4 timm feature indices used, finest first (ViT-S: blocks 2, 5, 8, 11).
        timm_pretrained: load the timm model's pretrained weights (hub download, or ``timm_pretrained_file``).
        timm_pretrained_file: local weights file in timm's format instead of the hub download.
        timm_dynamic_img_size: ViTs: interpolate position embeddings to any input size (false for CNNs).
        encoder_checkpoint: a third-party checkpoint (.safetensors or torch file) loaded into the encoder
            after it is built, keys remapped by ``encoder_prefix_map``; missing/unexpected keys are reported.
        encoder_prefix_map: ``[from, to]`` key-prefix pairs for ``encoder_checkpoint`` (e.g. Depth Anything's
            ``pretrained.`` -> ``backbone.``).
        freeze_encoder: no gradients to the encoder backbone (and it stays in eval mode).
    Camera:
        canonical_focal: f_c in pixels: the network predicts depth as if the focal were f_c, the output is
            multiplied by f / f_c. About the median focal of the training frames (synthetic set at 224 px
            width: 112-270 px), so canonical depths are close to metric ones.
        camera: how the network sees the intrinsics besides that scaling: ``rays`` (FiLM of every feature
            cell by its viewing ray, ``rays.RayFiLM``) or ``tokens`` (camera tokens inside a timm ViT
            encoder, ``camera_tokens``; rejected with the CNN encoder, which has no token sequence).
        ray_hidden: rays: hidden width of the ray-embedding MLP.
        cam_tokens, cam_blocks: tokens: camera tokens per frame, transformer blocks of the camera encoder.
        cam_token_inject_layer: tokens: the ViT block before which the camera tokens join the sequence (at
            most the last of ``timm_out_indices``, so they reach some feature).
    Temporal SSM (see ``videomamba_depth.ssm.TemporalMambaScale``):
        temporal_scales: scales with temporal mixing (subset of s4, s8, s16, s32; empty = per-frame model).
        temporal_blocks: Mamba blocks per temporal scale (same order).
        global_scale_blocks: Mamba blocks of the global scale path (0 = no global path): one token per frame
            pooled from the ``s32`` features, its SSM output read as a log-scale offset of the frame's depth.
        d_state, d_conv, expand, headdim, ffn_mult: Mamba block sizes; ``expand * width`` must be a multiple
            of ``headdim`` at every temporal scale.
        ssm_backend: ``torch`` (pure PyTorch, any device), ``cuda`` (mamba-ssm kernels) or ``numba`` (fused
            CPU kernel, no chunks); the sequence scan only, same results.
        ssm_chunk_size: scan chunk length, null = the backend's default (speed only, same results).
    Decoder:
        decoder_widths: fusion widths at strides 4, 8, 16, 32.
        head_width: channels of the head's stride-2 layer.
        head: output layer: ``dpt`` (1x1 conv to log depth) or ``zoe_bins`` (ZoeDepth's metric bins,
            ``bins`` module docstring).
        init_depth: dpt: depth in metres (at the canonical focal) predicted by a fresh model.
    Metric bins (``head: zoe_bins``; ZoeDepth's names, depths in metres at the canonical focal):
        n_bins: bins per pixel.
        bin_centers_type: ``normed`` (in ``[min_depth, max_depth]``), ``softplus`` (unbounded), ``hybrid1``
            (normed seed, softplus attractors) or ``hybrid2`` (softplus seed, normed attractors).
        min_depth, max_depth: the range of normed bins.
        bin_embedding_dim: width of the bin embeddings and of the bin MLPs.
        n_attractors: attractor points per decoder scale, coarse (s32) to fine (s4).
        attractor_type, attractor_alpha, attractor_gamma: ``inv`` (``dx / (1 + alpha |dx|^gamma)``) or
            ``exp`` (``exp(-alpha |dx|^gamma) dx``) attraction of the centres; larger alpha, weaker pull.
    """

    encoder: Literal["cnn", "timm"] = "cnn"
    widths: tuple[int, ...] = (32, 64, 96, 128)
    cnn_blocks: tuple[int, ...] = (1, 1, 1, 1)
    timm_name: str = "vit_small_patch14_dinov2.lvd142m"
    timm_out_indices: tuple[int, ...] = (2, 5, 8, 11)
    timm_pretrained: bool = True
    timm_pretrained_file: str | None = None
    timm_dynamic_img_size: bool = True
    encoder_checkpoint: str | None = None
    encoder_prefix_map: tuple[tuple[str, str], ...] = (("pretrained.", "backbone."),)
    freeze_encoder: bool = False
    canonical_focal: float = 170.0
    camera: Literal["rays", "tokens"] = "rays"
    ray_hidden: int = 16
    cam_tokens: int = 4
    cam_blocks: int = 2
    cam_token_inject_layer: int = 4
    temporal_scales: tuple[str, ...] = ("s16", "s32")
    temporal_blocks: tuple[int, ...] = (1, 2)
    global_scale_blocks: int = 0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    ffn_mult: int = 2
    ssm_backend: Literal["torch", "cuda", "numba"] = "torch"
    ssm_chunk_size: int | None = None
    decoder_widths: tuple[int, ...] = (32, 48, 64, 96)
    head_width: int = 16
    head: Literal["dpt", "zoe_bins"] = "dpt"
    init_depth: float = 3.0
    n_bins: int = 32
    bin_centers_type: Literal["normed", "softplus", "hybrid1", "hybrid2"] = "softplus"
    min_depth: float = 1e-3
    max_depth: float = 10.0
    bin_embedding_dim: int = 32
    n_attractors: tuple[int, ...] = (16, 8, 4, 1)
    attractor_type: Literal["inv", "exp"] = "inv"
    attractor_alpha: float = 1000.0
    attractor_gamma: int = 2

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("head", self.head, tuple(HEADS)),
            ("bin_centers_type", self.bin_centers_type, tuple(BIN_CENTERS_TYPES)),
            ("attractor_type", self.attractor_type, ATTRACTOR_TYPES),
            ("camera", self.camera, CAMERAS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        for name in ("widths", "cnn_blocks", "decoder_widths", "n_attractors"):
            value = getattr(self, name)
            if len(value) != len(SCALES):
                raise ValueError(f"{name} needs one value per scale {list(SCALES)}, got {list(value)}")
        for name, (low, high) in SIZE_BOUNDS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if any(not low <= v <= high for v in values):
                shown = list(value) if isinstance(value, tuple) else value
                raise ValueError(f"{name} must be in [{low}, {high}], got {shown}")
        unknown = sorted(set(self.temporal_scales) - set(SCALES))
        if unknown or len(set(self.temporal_scales)) != len(self.temporal_scales):
            raise ValueError(
                f"temporal_scales must be distinct names from {list(SCALES)}, got "
                f"{list(self.temporal_scales)}"
            )
        if len(self.temporal_blocks) != len(self.temporal_scales) or min(self.temporal_blocks, default=1) < 1:
            raise ValueError(
                f"temporal_blocks needs one value >= 1 per temporal scale, got "
                f"{list(self.temporal_blocks)} for {list(self.temporal_scales)}"
            )
        for name in (*self.temporal_scales, *([GLOBAL_SOURCE] if self.global_scale_blocks else [])):
            width = self.widths[SCALES.index(name)]
            if (self.expand * width) % self.headdim:
                raise ValueError(
                    f"scale {name}: expand * width = {self.expand * width} is not a multiple of "
                    f"headdim = {self.headdim}"
                )
        if not (math.isfinite(self.canonical_focal) and self.canonical_focal > 0):
            raise ValueError(
                f"canonical_focal must be a positive number of pixels, got {self.canonical_focal}"
            )
        if not DEPTH_RANGE[0] < self.init_depth < DEPTH_RANGE[1]:
            raise ValueError(f"init_depth must be inside {DEPTH_RANGE} m, got {self.init_depth}")
        if self.ssm_chunk_size is not None and self.ssm_chunk_size < 1:
            raise ValueError(f"ssm_chunk_size must be >= 1 or null, got {self.ssm_chunk_size}")
        if self.ssm_backend == "numba" and self.ssm_chunk_size is not None:
            raise ValueError(f"ssm_backend numba scans without chunks: ssm_chunk_size must be null, got "
                             f"{self.ssm_chunk_size}")
        if not DEPTH_RANGE[0] <= self.min_depth < self.max_depth <= DEPTH_RANGE[1]:
            raise ValueError(
                f"need {DEPTH_RANGE[0]} <= min_depth < max_depth <= {DEPTH_RANGE[1]} m, got "
                f"{self.min_depth}, {self.max_depth}"
            )
        if not (math.isfinite(self.attractor_alpha) and self.attractor_alpha > 0):
            raise ValueError(f"attractor_alpha must be a positive number, got {self.attractor_alpha}")
        if self.camera == "tokens":
            if self.encoder != "timm":
                raise ValueError(
                    "camera: tokens needs encoder: timm (a ViT); the CNN has no token sequence: use "
                    "camera: rays"
                )
            if self.cam_token_inject_layer > max(self.timm_out_indices):
                raise ValueError(
                    f"cam_token_inject_layer {self.cam_token_inject_layer} is after the last feature block "
                    f"{max(self.timm_out_indices)} (timm_out_indices): the tokens would reach no feature"
                )


class StudentOutput(NamedTuple):
    """Result of :meth:`VideoMambaDepth.forward`.

    Attributes:
        depth: ``(B, N, H, W)`` metric z-depth in metres, > 0 (fp32).
        states: states after the last frame, to continue the streams.
        summaries: temporal scale name -> ``(B, N, C, h, w)`` per-frame state summaries ``s_t``: the temporal
            blocks' output features (the readout of the SSM state), for the state-smoothing loss.
    """

    depth: Tensor
    states: StudentStates
    summaries: dict[str, Tensor]


class VideoMambaDepth(nn.Module):
    """The student (module docstring). Build it with :func:`build_student`.

    Args:
        config: the architecture.
        encoder: the per-frame encoder (``ENCODERS[config.encoder]``).
    """

    def __init__(self, config: ModelConfig, encoder: CnnEncoder | TimmEncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        # One of the two camera conditionings, under ``RAY_FILM_PREFIX`` or ``CAMERA_ENCODER_PREFIX``.
        if config.camera == "rays":
            self.rays = nn.ModuleDict(
                {name: RayFiLM(c, config.ray_hidden) for name, c in encoder.channels.items()}
            )
        else:
            self.camera = CameraEncoder(encoder.token_dim, config.cam_tokens, config.cam_blocks)
        self.temporal = _temporal_mixers(config, encoder.channels)
        if config.global_scale_blocks:
            width = encoder.channels[GLOBAL_SOURCE]
            self.global_pool = nn.Sequential(nn.Conv2d(width, width, 1), nn.GELU())
            # Zero readout: a fresh global path adds nothing (log-scale offset 0).
            self.global_head = nn.Linear(width, 1)
            nn.init.zeros_(self.global_head.weight)
            nn.init.zeros_(self.global_head.bias)
        self.decoder = DepthDecoder(
            encoder.channels, config.decoder_widths, config.head_width,
            partial(HEADS[config.head].from_config, config),
        )
        if config.freeze_encoder:
            self.encoder.backbone.requires_grad_(False)

    @property
    def backends(self) -> dict[str, str]:
        """What runs the model, to record with its outputs: encoder variant and SSM scan backend."""
        encoder = self.config.encoder if self.config.encoder == "cnn" else f"timm:{self.config.timm_name}"
        return {"encoder": encoder, "ssm": self.config.ssm_backend}

    def train(self, mode: bool = True) -> VideoMambaDepth:
        """Train/eval mode; a frozen encoder backbone always stays in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.backbone.eval()
        return self

    def init_states(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StudentStates:
        """Zero states (what ``states=None`` means) for ``batch`` streams of ``height x width`` frames.

        Token counts come from the padded feature sizes (``Encoder.feature_sizes``; the global path has one
        token per stream); ``dtype`` is the SSM conv windows' (the SSM states are fp32 whatever it is).
        """
        sizes = self.state_sizes(height, width)
        return StudentStates(
            batch=batch,
            names=tuple(self.temporal),
            sizes=tuple(sizes[name] for name in self.temporal),
            scales=tuple(
                mixer.init_state(batch, *sizes[name], device=device, dtype=dtype)
                for name, mixer in self.temporal.items()
            ),
        )

    def forward(self, rgb: Tensor, K: Tensor, states: StudentStates | None = None) -> StudentOutput:
        """Depth of a clip, continuing from ``states`` (None: the streams start here).

        Args:
            rgb: ``(B, N, 3, H, W)`` uint8 (0-255) or float in [0, 1]; any H, W.
            K: ``(B, N, 3, 3)`` intrinsics in pixels of these H x W frames.
            states: from :meth:`init_states` or a previous call, for the same B, H, W.

        Returns:
            :class:`StudentOutput` ``(depth (B, N, H, W), states, summaries)``.
        """
        if rgb.ndim != 5 or rgb.shape[2] != 3 or tuple(K.shape) != (*rgb.shape[:2], 3, 3):
            raise ValueError(
                f"expected rgb (B, N, 3, H, W) and K (B, N, 3, 3), got {tuple(rgb.shape)} and "
                f"{tuple(K.shape)}"
            )
        batch, _, _, height, width = rgb.shape
        Ks = rearrange(K, "b n i j -> (b n) i j")
        features = self._with_global_token(
            self._frame_features(rearrange(rgb, "b n c h w -> (b n) c h w"), Ks)
        )
        carried = self._carried_states(states, batch, height, width)
        new_states: dict[str, ScaleState] = {}
        summaries: dict[str, Tensor] = {}
        for name, mixer in self.temporal.items():
            x = rearrange(features[name], "(b n) c h w -> b n c h w", b=batch)
            summaries[name], new_states[name] = mixer(x, carried[name])
            features[name] = rearrange(summaries[name], "b n c h w -> (b n) c h w")
        depth = rearrange(self._depth(features, Ks, height, width), "(b n) h w -> b n h w", b=batch)
        return StudentOutput(depth, self._pack(new_states, batch, height, width), summaries)

    def step(self, rgb: Tensor, K: Tensor, states: StudentStates | None) -> tuple[Tensor, StudentStates]:
        """One frame per stream: ``rgb (B, 3, H, W)``, ``K (B, 3, 3)`` -> depth ``(B, H, W)`` and new states.

        Same result as :meth:`forward` on the clip so far; the cost per frame does not grow with time.
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3 or tuple(K.shape) != (rgb.shape[0], 3, 3):
            raise ValueError(
                f"expected rgb (B, 3, H, W) and K (B, 3, 3), got {tuple(rgb.shape)} and {tuple(K.shape)}"
            )
        batch, _, height, width = rgb.shape
        features = self._with_global_token(self._frame_features(rgb, K))
        carried = self._carried_states(states, batch, height, width)
        new_states: dict[str, ScaleState] = {}
        for name, mixer in self.temporal.items():
            features[name], new_states[name] = mixer.step(features[name], carried[name])
        return self._depth(features, K, height, width), self._pack(new_states, batch, height, width)

    def forward_frames(self, rgb: Tensor, K: Tensor, has_K: Tensor | None = None) -> Tensor:
        """Depth of independent images with the temporal blocks bypassed (image pre-training, single images).

        Args:
            rgb: ``(F, 3, H, W)`` uint8 (0-255) or float in [0, 1]; any H, W.
            K: ``(F, 3, 3)`` intrinsics in pixels of these images (an assumed K where unknown: the canonical
                focal scaling, and ``camera: rays``, use it as given).
            has_K: ``(F,)`` bool, False where K is not the images' own (``camera: tokens`` then uses its
                learned unknown-camera token); None: every K is known.

        Returns:
            ``(F, H, W)`` metric z-depth in metres, fp32. Equal to :meth:`forward` on one-frame clips as long
            as the temporal mixers are the identity (a fresh model, or one whose temporal blocks were never
            trained: :meth:`temporal_identity_violations`); the temporal parameters get no gradient here.
        """
        return self.forward_frames_with_features(rgb, K, has_K)[0]

    def forward_frames_with_features(
        self, rgb: Tensor, K: Tensor, has_K: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`forward_frames`, and the camera-conditioned features the decoder read: scale name ->
        ``(F, C_s, h_s, w_s)`` (``encoder.channels`` channels; for feature distillation)."""
        if rgb.ndim != 4 or rgb.shape[1] != 3 or tuple(K.shape) != (rgb.shape[0], 3, 3):
            raise ValueError(
                f"expected rgb (F, 3, H, W) and K (F, 3, 3), got {tuple(rgb.shape)} and {tuple(K.shape)}"
            )
        if has_K is not None and tuple(has_K.shape) != (rgb.shape[0],):
            raise ValueError(f"expected has_K ({rgb.shape[0]},), got {tuple(has_K.shape)}")
        height, width = rgb.shape[-2:]
        features = self._frame_features(rgb, K, has_K)
        return self._depth(self._with_global_token(features), K, height, width), features

    def temporal_identity_violations(self) -> list[str]:
        """Temporal parameters that a fresh model zero-initialises (the last projection of every residual
        branch, which makes a fresh mixer exactly the identity) but that are non-zero here; [] when every
        temporal mixer is still the identity."""
        # A throw-away fresh copy tells which parameters start at zero; built on the CPU with the torch
        # scan (any backend has the same parameters) and without touching the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            config = dataclasses.replace(self.config, ssm_backend="torch")
            fresh = _temporal_mixers(config, self.encoder.channels)
        zero = {name for name, p in fresh.named_parameters() if not p.any()}
        return [
            f"temporal.{name}" for name, p in self.temporal.named_parameters() if name in zero and p.any()
        ]

    def parameter_groups(self, lr: float, encoder_lr_factor: float, weight_decay: float,
                         temporal_lr_factor: float = 1.0) -> list[dict]:
        """Optimizer parameter groups (``torch.optim.AdamW(model.parameter_groups(...))``).

        The encoder backbone gets ``lr * encoder_lr_factor`` (e.g. 0.1 for a pretrained backbone), the
        temporal blocks ``lr * temporal_lr_factor`` (they start as the identity after per-frame pre-training,
        with zero output projections, and need larger steps to leave it in a short fine-tune), the rest
        (adapters, camera, decoder) ``lr``. Weight decay only on weight matrices and conv kernels: not on
        biases, norm weights or ``NO_DECAY_NAMES``. Frozen parameters are left out. Each group has a
        ``name`` (``backbone``, ``main``, ``temporal``, each also ``_no_decay``; the temporal blocks are in
        ``main`` when ``temporal_lr_factor`` is 1); empty groups are dropped.
        """
        if not (lr > 0 and encoder_lr_factor >= 0 and weight_decay >= 0 and temporal_lr_factor > 0):
            raise ValueError(
                f"need lr > 0, encoder_lr_factor >= 0, weight_decay >= 0, temporal_lr_factor > 0, got {lr}, "
                f"{encoder_lr_factor}, {weight_decay}, {temporal_lr_factor}"
            )
        backbone = {id(p) for p in self.encoder.backbone.parameters()}
        temporal = {id(p) for p in self.temporal.parameters()} if temporal_lr_factor != 1 else set()
        groups: dict[str, dict] = {
            "backbone": {"lr": lr * encoder_lr_factor, "weight_decay": weight_decay},
            "backbone_no_decay": {"lr": lr * encoder_lr_factor, "weight_decay": 0.0},
            "main": {"lr": lr, "weight_decay": weight_decay},
            "main_no_decay": {"lr": lr, "weight_decay": 0.0},
            "temporal": {"lr": lr * temporal_lr_factor, "weight_decay": weight_decay},
            "temporal_no_decay": {"lr": lr * temporal_lr_factor, "weight_decay": 0.0},
        }
        for group in groups.values():
            group["params"] = []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            decay = param.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
            part = "backbone" if id(param) in backbone else "temporal" if id(param) in temporal else "main"
            groups[part + ("" if decay else "_no_decay")]["params"].append(param)
        return [{"name": key, **group} for key, group in groups.items() if group["params"]]

    def _frame_features(self, frames: Tensor, K: Tensor, has_K: Tensor | None = None) -> dict[str, Tensor]:
        """Frames ``(F, 3, H, W)``, K ``(F, 3, 3)``, ``has_K`` ``(F,)`` or None (all known) ->
        camera-conditioned ``{scale: (F, C, h, w)}``."""
        x = self.encoder.normalize_and_pad(frames)
        if self.config.camera == "tokens":
            return self.encoder(x, self.camera(K, has_K, (frames.shape[-2], frames.shape[-1])))
        padded = (x.shape[-2], x.shape[-1])
        features = self.encoder(x)
        return {
            name: self.rays[name](f, ray_features(K, (f.shape[-2], f.shape[-1]), padded))
            for name, f in features.items()
        }

    def _with_global_token(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the global path's per-frame token ``(F, C, 1, 1)`` under ``GLOBAL`` (when the model has one):
        a 1x1 conv + GELU of the ``s32`` features, averaged over the whole (padded) map."""
        if not self.config.global_scale_blocks:
            return features
        pooled = self.global_pool(features[GLOBAL_SOURCE]).mean(dim=(-2, -1), keepdim=True)
        return {**features, GLOBAL: pooled}

    def _depth(self, features: dict[str, Tensor], K: Tensor, height: int, width: int) -> Tensor:
        """Features of ``F`` frames (and the global token, if any) -> metric depth ``(F, H, W)``, fp32."""
        features = dict(features)
        token = features.pop(GLOBAL, None)
        log_depth = self.decoder(features)  # (F, 1, H_p / 2, W_p / 2), canonical, fp32
        with torch.autocast(device_type=log_depth.device.type, enabled=False):
            log_depth = F.interpolate(
                log_depth, size=self.encoder.padded_size(height, width), mode="bilinear", align_corners=False
            )[:, 0, :height, :width]  # crop the bottom/right padding
            log_scale = canonical_log_scale(K, self.config.canonical_focal)
            if token is not None:
                log_scale = log_scale + self.global_head(token.flatten(1).float())[:, 0]
            log_depth = log_depth + log_scale[:, None, None]
            return log_depth.clamp(math.log(DEPTH_RANGE[0]), math.log(DEPTH_RANGE[1])).exp()

    def state_sizes(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """``(h, w)`` cells of every state for ``height x width`` frames: the encoder's feature scales
        (``Encoder.feature_sizes``), and 1 x 1 for the global path (``GLOBAL``)."""
        return {**self.encoder.feature_sizes(height, width), GLOBAL: (1, 1)}

    def _carried_states(
        self, states: StudentStates | None, batch: int, height: int, width: int
    ) -> dict[str, ScaleState | None]:
        """Per temporal scale state from ``states`` (None: zero), after checking it fits this input."""
        if states is None:
            return dict.fromkeys(self.temporal)
        expected = {
            name: size for name, size in self.state_sizes(height, width).items() if name in self.temporal
        }
        if states.batch != batch or states.geometry() != expected:
            raise ValueError(
                f"states are for batch {states.batch} and feature sizes {states.geometry()}, but this input "
                f"(batch {batch}, {height}x{width} frames) needs {expected}: start the streams with "
                f"states=None or init_states({batch}, {height}, {width})"
            )
        return dict(states.items())

    def _pack(self, states: dict[str, ScaleState], batch: int, height: int, width: int) -> StudentStates:
        sizes = self.state_sizes(height, width)
        return StudentStates(
            batch=batch,
            names=tuple(states),
            sizes=tuple(sizes[name] for name in states),
            scales=tuple(states.values()),
        )


def _temporal_mixers(config: ModelConfig, channels: dict[str, int]) -> nn.ModuleDict:
    """Fresh temporal mixers (exactly the identity), one per ``config.temporal_scales``, then the global
    path's (``GLOBAL``, on the ``s32`` channels) when ``config.global_scale_blocks`` > 0."""
    paths = [
        (name, channels[name], num_blocks)
        for name, num_blocks in zip(config.temporal_scales, config.temporal_blocks, strict=True)
    ]
    if config.global_scale_blocks:
        paths.append((GLOBAL, channels[GLOBAL_SOURCE], config.global_scale_blocks))
    return nn.ModuleDict(
        {
            name: TemporalFeatureMixer(
                TemporalMambaScale(
                    width,
                    num_blocks=num_blocks,
                    ffn_mult=config.ffn_mult,
                    d_state=config.d_state,
                    d_conv=config.d_conv,
                    expand=config.expand,
                    headdim=config.headdim,
                    chunk_size=config.ssm_chunk_size,
                    backend=config.ssm_backend,
                )
            )
            for name, width, num_blocks in paths
        }
    )


def build_student(cfg: ModelConfig, *, pretrained: bool = True) -> VideoMambaDepth:
    """The student described by ``cfg``.

    ``pretrained=False`` builds the architecture only: no hub download, no ``encoder_checkpoint`` read (what
    ``models.io.load_student`` uses before loading its own weights).
    """
    model = VideoMambaDepth(cfg, ENCODERS[cfg.encoder].from_config(cfg, pretrained))
    if pretrained and cfg.encoder_checkpoint is not None:
        load_external_checkpoint(
            model.encoder, cfg.encoder_checkpoint, prefix_map=dict(cfg.encoder_prefix_map)
        )
    return model
