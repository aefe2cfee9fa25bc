"""Camera tokens (``model.camera: tokens``): the intrinsics as a few tokens inside a ViT encoder.

After Depth Anything 3's camera encoder (Lin et al., 2025, "Depth Anything 3: Recovering the Visual Space from
Any Views", ``depth_anything_3/model/cam_enc.py``): an MLP embeds the camera, a few small transformer blocks
turn the embedding into ``cam_tokens`` tokens, and ``TimmEncoder`` prepends them to the ViT's token sequence
before block ``cam_token_inject_layer`` and drops them again from the features it returns, so every later
block's attention can read the camera. It replaces the per-pixel ray FiLM of ``camera: rays``; the
canonical-focal scaling of the output (``rays.canonical_log_scale``) applies to both.

The camera is described by its normalised intrinsics ``(fx / W, fy / H, cx / W, cy / H)`` for the ``H x W``
frame that K refers to: the field of view and the principal point, independent of the resolution. Frames
whose intrinsics are unknown (``has_K`` False, e.g. an image dataset without calibration) get a learned
"unknown camera" embedding instead of the MLP's output; it goes through the same blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Channels per attention head of the camera blocks (ViT widths are multiples of 64: 192, 384, 768, 1024).
CAMERA_HEAD_DIM = 64
# Std of the learned queries and unknown-camera embedding at initialisation (as timm's cls token).
INIT_STD = 0.02


def normalized_intrinsics(K: Tensor, size: tuple[int, int]) -> Tensor:
    """``(F, 3, 3)`` K in pixels of ``size = (H, W)`` frames -> ``(F, 4)``
    ``(fx / W, fy / H, cx / W, cy / H)``, fp32."""
    height, width = size
    K = K.float()
    return torch.stack([K[:, 0, 0] / width, K[:, 1, 1] / height, K[:, 0, 2] / width, K[:, 1, 2] / height], -1)


class CameraEncoder(nn.Module):
    """Intrinsics -> camera tokens: ``K (F, 3, 3)``, ``has_K (F,)`` bool or None (all known), frame size ->
    ``(F, num_tokens, dim)``.

    ``tokens = blocks(queries + embed)``, ``embed = MLP(normalised intrinsics)`` or the learned ``unknown``
    embedding where ``has_K`` is False; ``queries`` are learned, one per token, so the tokens differ. Blocks
    are pre-norm transformer encoder layers (no dropout: per-frame and deterministic, so streaming and
    clip modes agree), followed by a LayerNorm.

    Args:
        dim: token width (the ViT's embedding width).
        num_tokens: camera tokens per frame.
        num_blocks: transformer blocks over the camera tokens (0: the MLP embedding plus the queries).
    """

    def __init__(self, dim: int, num_tokens: int, num_blocks: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.unknown = nn.Parameter(torch.zeros(dim))
        self.queries = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.unknown, std=INIT_STD)
        nn.init.trunc_normal_(self.queries, std=INIT_STD)
        heads = dim // CAMERA_HEAD_DIM if dim % CAMERA_HEAD_DIM == 0 else 1
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, K: Tensor, has_K: Tensor | None, size: tuple[int, int]) -> Tensor:
        intrinsics = normalized_intrinsics(K, size)
        if has_K is None:
            known = torch.ones(K.shape[0], 1, dtype=torch.bool, device=K.device)
        else:
            known = has_K.to(device=K.device, dtype=torch.bool)[:, None]
        # Always through torch.where, even when every K is known: ``unknown`` then takes part with a zero
        # gradient, as DDP requires of every parameter. Unknown K may be anything (zeros, a guess): zeroed
        # before the MLP so that its output and gradient stay finite.
        embed = torch.where(known, self.mlp(torch.where(known, intrinsics, 0.0)), self.unknown)
        tokens = self.queries + embed[:, None]
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)
