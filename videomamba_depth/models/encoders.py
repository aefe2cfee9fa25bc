"""Per-frame image encoders of the student: RGB frames -> a 4-scale feature pyramid (strides 4, 8, 16, 32).

Variants (``ENCODERS``, chosen by ``ModelConfig.encoder``):

- ``cnn`` (default): a compact GroupNorm ResNet-style pyramid in plain PyTorch, trainable from scratch on a
  CPU in minutes.
- ``timm``: any ``timm`` backbone with ``features_only`` (DINOv2 ViTs, ConvNeXt, ...), pretrained weights from
  the Hugging Face hub or a local file; 1x1 adapter convs map its features to the pyramid's widths and
  bilinear resampling to the pyramid's sizes (a ViT's single stride-14 map becomes four scales, as in DPT).

Every encoder exposes the same interface, so the rest of the student does not depend on the variant:
``channels`` (scale name -> width), ``pad_multiple``, ``padded_size`` / ``feature_sizes``,
``normalize_and_pad`` and ``forward``. The part that pretrained weights, ``freeze_encoder`` and the encoder
learning-rate factor apply to is the submodule ``backbone``. A timm ViT also takes camera tokens
(``model.camera: tokens``, ``camera_tokens`` module): ``TimmEncoder.forward(x, camera_tokens)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.models.layers import ResBlock, conv3x3, group_norm

if TYPE_CHECKING:
    from videomamba_depth.models.student import ModelConfig

# Pyramid scales, finest first: names (used as keys of features, states and summaries) and strides.
SCALES = ("s4", "s8", "s16", "s32")
STRIDES = (4, 8, 16, 32)

# ImageNet statistics (what timm backbones are trained with; as good as any for the from-scratch CNN).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """Base class: input normalisation, padding geometry and the pyramid's sizes.

    Subclasses set ``backbone``, ``channels`` and ``pad_multiple`` and implement ``forward``.

    Pad/crop arithmetic: a ``H x W`` frame is zero-padded (after normalisation, so padding is the mean
    colour) on the bottom and right to ``H_p = ceil(H / m) * m`` (same for W), ``m = pad_multiple``; scale
    ``s`` has ``ceil(H_p / s) x ceil(W_p / s)`` cells (exactly ``H_p / s`` when ``s`` divides ``m``, as in the
    CNN with ``m = 32``). Padding only bottom/right keeps every input pixel at its coordinates, so K needs no
    change, and the decoder's output is cropped back with ``[:H, :W]``. Example: the prepared 224 x 168 frames
    (multiples of 14, not of 32) become 224 x 192, with scales 56 x 48, 28 x 24, 14 x 12 and 7 x 6 (W x H).
    """

    backbone: nn.Module
    channels: dict[str, int]
    pad_multiple: int

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Not persistent: fixed by the encoder variant, so not part of checkpoints.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H_p, W_p)``: the frame size rounded up to a multiple of ``pad_multiple``."""
        m = self.pad_multiple
        # Ceil division written as (n + m - 1) // m, not -(-n // m): the same for sizes >= 0, and it stays
        # right when exported to ONNX with symbolic sizes, whose integer Div truncates instead of flooring.
        return (height + m - 1) // m * m, (width + m - 1) // m * m

    def feature_sizes(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Scale name -> ``(h, w)`` of its feature maps for ``height x width`` input frames."""
        hp, wp = self.padded_size(height, width)
        return {name: ((hp + s - 1) // s, (wp + s - 1) // s) for name, s in zip(SCALES, STRIDES, strict=True)}

    def normalize_and_pad(self, rgb: Tensor) -> Tensor:
        """``(F, 3, H, W)`` uint8 or float in [0, 1] -> ``(F, 3, H_p, W_p)`` fp32, normalised, padded."""
        x = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()
        x = (x - self.mean) / self.std
        hp, wp = self.padded_size(*x.shape[-2:])
        return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Padded, normalised frames ``(F, 3, H_p, W_p)`` -> scale name -> ``(F, C_s, h_s, w_s)``."""
        raise NotImplementedError


class CnnPyramid(nn.Module):
    """Stem (two stride-2 3x3 convs to stride 4), then one stage per scale: a stride-2 conv (except the first)
    and ``blocks[i]`` residual blocks of width ``widths[i]``.

    Outputs are the stages' residual streams (not normalised; the decoder and the temporal blocks normalise
    their inputs themselves).
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        stem_width = max(widths[0] // 2, 1)
        self.stem = nn.Sequential(
            conv3x3(3, stem_width, stride=2),
            group_norm(stem_width),
            nn.GELU(),
            conv3x3(stem_width, widths[0], 2),
        )
        stages = []
        for i, (width, num_blocks) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [group_norm(widths[i - 1]), nn.GELU(), conv3x3(widths[i - 1], width, stride=2)]
            layers += [ResBlock(width) for _ in range(num_blocks)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(F, 3, H, W)``, H, W multiples of 32 -> scale i: ``(F, widths[i], H / 2^(i+2), W / 2^(i+2))``."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class CnnEncoder(Encoder):
    """The default encoder: :class:`CnnPyramid` as ``backbone``, trained from scratch.

    Args:
        widths: channels at strides 4, 8, 16, 32.
        blocks: residual blocks per scale.
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = CnnPyramid(widths, blocks)
        self.channels = dict(zip(SCALES, widths, strict=True))
        self.pad_multiple = STRIDES[-1]

    @classmethod
    def from_config(cls, cfg: ModelConfig, pretrained: bool) -> CnnEncoder:
        """Build from the model config (``pretrained`` is unused: the CNN has no hub weights)."""
        return cls(cfg.widths, cfg.cnn_blocks)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(SCALES, self.backbone(x), strict=True))


TIMM_HINT = (
    "model.encoder=timm needs the `timm` package, which could not be imported. Install it with\n"
    "    pip install 'videomamba-depth[timm]'\n"
    "together with the torchvision release built for your torch (a mismatched torchvision makes "
    "`import timm` fail). Pretrained weights are downloaded from the Hugging Face hub by model.timm_name; "
    "without internet, download the weights file elsewhere (model.safetensors or pytorch_model.bin from "
    "huggingface.co/timm/<model.timm_name>) and set model.timm_pretrained_file to its local path, or load a "
    "third-party checkpoint with model.encoder_checkpoint (keys remapped by model.encoder_prefix_map). "
    "The default model.encoder=cnn needs no extra package."
)


def require_timm() -> ModuleType:
    """The ``timm`` module, or an ImportError that says how to install it and use local weights."""
    try:
        import timm
    except (ImportError, RuntimeError) as exc:  # RuntimeError: torchvision built for another torch
        raise MissingDependencyError(f"{TIMM_HINT}\n(import failed: {exc})") from exc
    return timm


class TimmEncoder(Encoder):
    """A ``timm`` ``features_only`` backbone with adapters to the pyramid's widths and sizes.

    Each selected backbone feature map (``out_indices``, finest first, one per scale) goes through a 1x1 conv
    to ``widths[i]`` and, when its size differs from scale ``i``'s, bilinear resampling to it: ConvNeXt's
    stride 4-32 maps need none, a DINOv2 ViT's stride-14 maps are resampled to strides 4, 8, 16, 32. Inputs
    are padded to the lcm of the backbone's strides (14 for a ViT/14, 32 for ConvNeXt). BatchNorm layers of
    the backbone (if any) always run in eval mode, with their pretrained statistics, so a clip and its frames
    one by one stay equivalent in training too.

    With ``camera_token_layer`` set (a ViT backbone only), ``forward`` takes camera tokens and runs the ViT's
    blocks itself (timm's ``forward_intermediates`` loop): the tokens are prepended to the sequence (before
    the cls/register tokens) right before block ``camera_token_layer`` and skipped when the feature maps are
    read, so the maps keep their shapes; the other layers and their state-dict keys are timm's.

    Args:
        name: timm model name, e.g. ``vit_small_patch14_dinov2.lvd142m`` or ``convnext_atto.d2_in1k``.
        out_indices: 4 feature indices (timm's ``out_indices``), finest scale first.
        widths: channels of the 4 output scales.
        pretrained: load the model's pretrained weights (hub, or ``pretrained_file``).
        pretrained_file: local weights file in timm's format, used instead of the hub download.
        dynamic_img_size: pass ``dynamic_img_size=True`` to timm (ViTs: position embeddings interpolated to
            any input size). CNN backbones reject this argument: set it false for them.
        camera_token_layer: the ViT block before which camera tokens join the sequence; None: no tokens.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int],
        widths: Sequence[int],
        pretrained: bool,
        pretrained_file: str | None,
        dynamic_img_size: bool,
        camera_token_layer: int | None = None,
    ) -> None:
        timm = require_timm()
        if len(out_indices) != len(SCALES):
            raise ValueError(
                f"timm out_indices must select {len(SCALES)} feature maps, got {list(out_indices)}"
            )
        kwargs: dict = {"features_only": True, "out_indices": tuple(out_indices)}
        if dynamic_img_size:
            kwargs["dynamic_img_size"] = True
        if pretrained and pretrained_file is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        backbone = timm.create_model(name, pretrained=pretrained, **kwargs)
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        super().__init__(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.backbone = backbone
        self.name = name
        in_channels = backbone.feature_info.channels()
        self.adapters = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(in_channels, widths, strict=True))
        self.channels = dict(zip(SCALES, widths, strict=True))
        self.pad_multiple = math.lcm(*backbone.feature_info.reduction())
        self.camera_token_layer = camera_token_layer
        if camera_token_layer is not None:
            vit = getattr(backbone, "model", None)
            if not all(hasattr(vit, a) for a in ("blocks", "patch_embed", "_pos_embed", "num_prefix_tokens")):
                raise ValueError(
                    f"model.camera: tokens needs a ViT timm backbone (a token sequence); {name} is not one: "
                    "use model.camera: rays"
                )
            if not 0 <= camera_token_layer < len(vit.blocks):
                raise ValueError(
                    f"model.cam_token_inject_layer {camera_token_layer} is not a block of {name} as used "
                    f"(blocks 0..{len(vit.blocks) - 1})"
                )

    @property
    def token_dim(self) -> int:
        """Width of the ViT's tokens (what camera tokens must have)."""
        return self.backbone.model.embed_dim

    @classmethod
    def from_config(cls, cfg: ModelConfig, pretrained: bool) -> TimmEncoder:
        """Build from the model config; ``pretrained=False`` skips every weight download or file read."""
        return cls(
            cfg.timm_name,
            cfg.timm_out_indices,
            cfg.widths,
            pretrained=pretrained and cfg.timm_pretrained,
            pretrained_file=cfg.timm_pretrained_file,
            dynamic_img_size=cfg.timm_dynamic_img_size,
            camera_token_layer=cfg.cam_token_inject_layer if cfg.camera == "tokens" else None,
        )

    def train(self, mode: bool = True) -> TimmEncoder:
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, x: Tensor, camera_tokens: Tensor | None = None) -> dict[str, Tensor]:
        """As :meth:`Encoder.forward`; ``camera_tokens`` ``(F, T, D)``: required with ``camera_token_layer``
        set, else must be None."""
        if (camera_tokens is None) != (self.camera_token_layer is None):
            raise ValueError("camera tokens go with, and only with, an encoder built with camera_token_layer")
        sizes = self.feature_sizes(*x.shape[-2:])
        maps = self.backbone(x) if camera_tokens is None else self._vit_maps(x, camera_tokens)
        out = {}
        for (name, size), adapter, feature in zip(sizes.items(), self.adapters, maps, strict=True):
            feature = adapter(feature)
            if tuple(feature.shape[-2:]) != size:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            out[name] = feature
        return out

    def _vit_maps(self, x: Tensor, camera_tokens: Tensor) -> list[Tensor]:
        """The ViT's ``out_indices`` feature maps ``(F, D, h, w)`` with camera tokens ``(F, T, D)`` in the
        sequence from block ``camera_token_layer`` on (timm's ``forward_intermediates``, plus the tokens)."""
        vit = self.backbone.model
        grid_h, grid_w = vit.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        taken = set(self.backbone.out_indices)
        maps = []
        for i, block in enumerate(vit.blocks):
            if i == self.camera_token_layer:
                tokens = torch.cat([camera_tokens.to(tokens.dtype), tokens], dim=1)
            tokens = block(tokens)
            if i in taken:
                injected = i >= self.camera_token_layer
                prefix = vit.num_prefix_tokens + (camera_tokens.shape[1] if injected else 0)
                maps.append(rearrange(tokens[:, prefix:], "f (h w) d -> f d h w", h=grid_h, w=grid_w))
        return maps


# Encoder variants by ``ModelConfig.encoder``.
ENCODERS: dict[str, type[CnnEncoder] | type[TimmEncoder]] = {"cnn": CnnEncoder, "timm": TimmEncoder}
