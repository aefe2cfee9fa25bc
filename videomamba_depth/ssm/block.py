"""Temporal Mamba blocks: a selective state-space model running along time, per token.

Each token (one spatial position of one video's feature map) is a sequence over frames. The mixer follows
Mamba-2 (``mamba_ssm/modules/mamba2_simple.py``: Dao & Gu, 2024): input projection to ``[z, xBC, dt]``, a
causal depthwise conv along time over ``xBC``, input-dependent ``dt``, ``B``, ``C``, a scalar decay
``A = -exp(A_log)`` per head, a ``D`` skip and a SiLU gate ``z``, then the output projection.

Three ways to run a sequence, with the same outputs and final state (fp32, up to float rounding):

- ``forward(x)``: the whole sequence at once (chunked scan: training, prefill);
- ``forward`` on consecutive pieces, each starting from the state the previous one returned (chunked BPTT);
- ``step(x_t)`` frame by frame (streaming inference: constant memory and cost per frame).

No positional encoding along time: the SSM is causal and time-invariant in its parameters (decays depend on
the inputs, not on a frame index), so nothing runs out on videos longer than any seen in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videomamba_depth.ssm.kernels import require_mamba_ssm, ssd_scan_cuda
from videomamba_depth.ssm.numba_scan import require_numba, ssd_scan_numba
from videomamba_depth.ssm.scan import ssd_scan, ssd_scan_ref
from videomamba_depth.ssm.state import BlockState, ScaleState

# Sequence-scan backends and their default chunk lengths. The chunk length only trades speed (results agree
# up to rounding): short chunks suit CPU (the intra-chunk work is quadratic in the chunk), while the Triton
# kernel's tiles are sized for chunks of 64-256 frames. "numba" (CPU) is the fused per-frame recurrence,
# compiled: it has no chunks.
DEFAULT_CHUNK_SIZE: dict[str, int | None] = {"torch": 16, "cuda": 64, "numba": None}

# ``TemporalMambaScale.forward`` runs its blocks over segments of at most this many frames, carrying the
# states from one segment to the next (the chunked mode, so results are the same up to rounding). Long
# no-grad sequences (prefilling a stream, evaluating a whole video) then need activation memory for one
# segment, not for the whole video, and stay cache- and allocator-friendly; with autograd the graph keeps all
# activations anyway. A multiple of every default chunk size, so segments do not move chunk boundaries.
SEGMENT_FRAMES = 64

ScanFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def causal_conv(window: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise causal convolution along time, given the inputs preceded by the carried window.

    Args:
        window: (L, K - 1 + T, D) the previous ``K - 1`` inputs, then this call's ``T`` inputs.
        weight: (D, K), oldest tap first (``nn.Conv1d`` with ``padding=K-1`` cut to causal, in this layout).
        bias: (D,).

    Returns:
        (L, T, D). Written as K shifted multiply-adds (K is 4) on the (L, T, D) layout: no transposes (which
        ``conv1d`` would need), and the same arithmetic for one frame as for a sequence.
    """
    k = weight.shape[1]
    length = window.shape[1] - k + 1
    taps = weight.t().contiguous()  # (K, D): each tap's weights contiguous, so the products vectorise
    out = torch.addcmul(bias, window[:, :length], taps[0])
    for i in range(1, k):
        # In place: autograd needs neither the running sum nor its past values, and every fresh
        # activation-sized buffer costs page faults on CPU.
        out.addcmul_(window[:, i : i + length], taps[i])
    return out


def _check_tokens(x: Tensor, dim: int, sequence: bool) -> None:
    """Shape check: ``(L, T >= 1, dim)`` for sequences, ``(L, dim)`` for single frames."""
    if sequence:
        ok = x.ndim == 3 and x.shape[1] >= 1 and x.shape[2] == dim
        expected = f"(num_tokens, num_frames, {dim})"
    else:
        ok, expected = x.ndim == 2 and x.shape[1] == dim, f"(num_tokens, {dim})"
    if not ok:
        raise ValueError(f"expected temporal tokens of shape {expected}, got {tuple(x.shape)}")


class MambaMixer(nn.Module):
    """Mamba-2 style selective SSM mixer along time (no norm, no residual).

    Args:
        dim: model width C.
        d_state: SSM state size N per head and head channel.
        d_conv: causal conv length along time (frames), >= 1.
        expand: inner width ``d_inner = expand * dim``.
        headdim: channels per head P; ``nheads = d_inner // headdim``.
        ngroups: groups sharing B and C; must divide ``nheads``.
        dt_min, dt_max: range of the initial step size (log-uniform), as in Mamba.
        A_init_range: range of the initial decay rates ``-A`` (uniform), as in Mamba-2.
        chunk_size: scan chunk length; ``None`` takes the backend's default (``DEFAULT_CHUNK_SIZE``).
        backend: "torch" (default, pure PyTorch), "cuda" (mamba-ssm Triton kernel for sequences) or "numba"
            (fused CPU kernel for sequences); "cuda" and "numba" raise ImportError at construction when their
            package is missing — no silent fallback.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        chunk_size: int | None = None,
        backend: str = "torch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if backend not in DEFAULT_CHUNK_SIZE:
            raise ValueError(f"unknown SSM backend {backend!r}; choose one of {sorted(DEFAULT_CHUNK_SIZE)}")
        d_inner = expand * dim
        if d_inner % headdim:
            raise ValueError(f"expand * dim = {d_inner} is not a multiple of headdim = {headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"nheads = {nheads} is not a multiple of ngroups = {ngroups}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        if backend == "cuda":
            require_mamba_ssm()
        if backend == "numba":
            if chunk_size is not None:
                raise ValueError(f"backend='numba' has no chunks: chunk_size must be None, not {chunk_size}")
            require_numba()
        self.dim, self.d_state, self.d_conv, self.d_inner = dim, d_state, d_conv, d_inner
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.backend = backend
        self.chunk_size = DEFAULT_CHUNK_SIZE[backend] if chunk_size is None else chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state
        factory = {"device": device, "dtype": dtype}

        # Order of the projection: [z, xBC, dt] (as in Mamba-2).
        self.in_proj = nn.Linear(dim, d_inner + self.conv_dim + nheads, bias=False, **factory)
        # Same init as nn.Conv1d(groups=conv_dim): uniform with bound 1 / sqrt(fan_in), fan_in = d_conv.
        bound = 1.0 / math.sqrt(d_conv)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **factory).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim, **factory).uniform_(-bound, bound))

        # The SSM parameters are created in fp32 and always read through .float(): they feed the fp32 island
        # of the scan (decays are exponentials of products, compounded over the whole video).
        fp32 = {"device": device, "dtype": torch.float32}
        dt = torch.exp(torch.empty(nheads, **fp32).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads, **fp32).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(nheads, **fp32))

        # Zero-initialised: a fresh mixer outputs exactly 0, so a fresh residual block is the identity.
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **factory)
        nn.init.zeros_(self.out_proj.weight)

    def init_state(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BlockState:
        """Zero state for ``num_tokens`` sequences; ``dtype`` is the conv window's (the SSM state is fp32)."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return BlockState(
            conv=torch.zeros(num_tokens, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype),
            ssm=torch.zeros(
                num_tokens, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32
            ),
        )

    def forward(self, x: Tensor, state: BlockState | None = None) -> tuple[Tensor, BlockState]:
        """Mix a sequence: ``x`` (L, T, C) -> ``y`` (L, T, C) and the state after its last frame."""
        _check_tokens(x, self.dim, sequence=True)
        if self.backend == "cuda":
            if not x.is_cuda:
                raise ValueError(f"backend='cuda' needs CUDA tensors, got a tensor on {x.device}")
            scan: ScanFn = partial(ssd_scan_cuda, chunk_size=self.chunk_size)
        elif self.backend == "numba":
            scan = ssd_scan_numba
        else:
            scan = partial(ssd_scan, chunk_size=self.chunk_size)
        return self._mix(x, state, scan)

    def step(self, x: Tensor, state: BlockState | None = None) -> tuple[Tensor, BlockState]:
        """One frame: ``x`` (L, C) -> ``y`` (L, C) and the new state. PyTorch on every backend."""
        _check_tokens(x, self.dim, sequence=False)
        y, state = self._mix(x[:, None], state, ssd_scan_ref)
        return y[:, 0], state

    def _mix(self, x: Tensor, state: BlockState | None, scan: ScanFn) -> tuple[Tensor, BlockState]:
        num_tokens, num_frames, _ = x.shape
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if state is None:
            state = self.init_state(num_tokens, x.device, xbc.dtype)
        elif state.num_tokens != num_tokens:
            raise ValueError(f"state is for {state.num_tokens} tokens, the input has {num_tokens}")
        window = torch.cat([state.conv.to(xbc.dtype), xbc], dim=1)  # (L, K - 1 + T, conv_dim)
        xbc = F.silu(causal_conv(window, self.conv_weight, self.conv_bias))
        xs, B, C = torch.split(xbc, [self.d_inner, *(2 * [self.ngroups * self.d_state])], dim=-1)
        # fp32 island, even under bf16 autocast: dt, decays and the scan accumulate over the whole video.
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, ssm = scan(
                rearrange(xs.float(), "l t (h p) -> l t h p", p=self.headdim),
                F.softplus(dt.float() + self.dt_bias.float()),
                -torch.exp(self.A_log.float()),
                rearrange(B.float(), "l t (g n) -> l t g n", g=self.ngroups),
                rearrange(C.float(), "l t (g n) -> l t g n", g=self.ngroups),
                self.D.float(),
                state.ssm,
            )
        y = rearrange(y, "l t h p -> l t (h p)").to(z.dtype) * F.silu(z)
        # A compact copy of the window's tail: a view would keep the whole (L, K - 1 + T, D) buffer alive.
        return self.out_proj(y), BlockState(conv=window[:, num_frames:].contiguous(), ssm=ssm)


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(LN(x))``, then ``+ FFN(LN(.))`` (token-wise, per frame).

    Both residual branches end in a zero-initialised projection, so a fresh block is exactly the identity.

    Args:
        dim: model width C.
        mixer_cls: builds the temporal mixer from ``dim`` (e.g. ``partial(MambaMixer, d_state=16)``).
        ffn_mult: hidden width of the FFN as a multiple of ``dim``.
    """

    def __init__(
        self,
        dim: int,
        mixer_cls: Callable[[int], MambaMixer] = MambaMixer,
        ffn_mult: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm_mixer = nn.LayerNorm(dim, **factory)
        self.mixer = mixer_cls(dim)
        self.norm_ffn = nn.LayerNorm(dim, **factory)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim, **factory), nn.GELU(), nn.Linear(ffn_mult * dim, dim, **factory)
        )
        nn.init.zeros_(self.ffn[-1].weight)
        nn.init.zeros_(self.ffn[-1].bias)

    def forward(self, x: Tensor, state: BlockState | None = None) -> tuple[Tensor, BlockState]:
        """``x`` (L, T, C) -> (L, T, C) and the state after the last frame."""
        h, state = self.mixer(self.norm_mixer(x), state)
        return self._ffn(x + h), state

    def step(self, x: Tensor, state: BlockState | None = None) -> tuple[Tensor, BlockState]:
        """One frame: ``x`` (L, C) -> (L, C) and the new state."""
        h, state = self.mixer.step(self.norm_mixer(x), state)
        return self._ffn(x + h), state

    def _ffn(self, x: Tensor) -> Tensor:
        return x + self.ffn(self.norm_ffn(x))


class TemporalMambaScale(nn.Module):
    """A stack of ``MambaBlock``s along time for one feature scale; a fresh stack is exactly the identity.

    Sequences are ``(num_tokens, num_frames, dim)``; the state is a ``ScaleState`` (one ``BlockState`` per
    block). Arguments other than ``num_blocks`` and ``ffn_mult`` are those of ``MambaMixer``.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 2,
        ffn_mult: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        chunk_size: int | None = None,
        backend: str = "torch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.dim = dim
        mixer_cls = partial(
            MambaMixer,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            headdim=headdim,
            ngroups=ngroups,
            dt_min=dt_min,
            dt_max=dt_max,
            A_init_range=A_init_range,
            chunk_size=chunk_size,
            backend=backend,
            device=device,
            dtype=dtype,
        )
        self.blocks = nn.ModuleList(
            MambaBlock(dim, mixer_cls, ffn_mult, device=device, dtype=dtype) for _ in range(num_blocks)
        )

    @property
    def backend(self) -> str:
        """Sequence-scan backend of the blocks ("torch", "cuda" or "numba"); record it with outputs."""
        return self.blocks[0].mixer.backend

    def init_state(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ScaleState:
        """Zero state (what ``state=None`` means) for ``num_tokens`` sequences."""
        return ScaleState(tuple(b.mixer.init_state(num_tokens, device, dtype) for b in self.blocks))

    def forward(self, x: Tensor, state: ScaleState | None = None) -> tuple[Tensor, ScaleState]:
        """``x`` (L, T, C) -> ``y`` (L, T, C) and the state after the last frame, to carry on."""
        _check_tokens(x, self.dim, sequence=True)
        states = self._block_states(state)
        ys = []
        for segment in torch.split(x, SEGMENT_FRAMES, dim=1):
            new_states = []
            for block, block_state in zip(self.blocks, states, strict=True):
                segment, block_state = block(segment, block_state)
                new_states.append(block_state)
            states = new_states
            ys.append(segment)
        return torch.cat(ys, dim=1), ScaleState(tuple(states))

    def step(self, x: Tensor, state: ScaleState | None = None) -> tuple[Tensor, ScaleState]:
        """One frame ``x`` (L, C) -> ``y`` (L, C) and the new state; the cost does not grow with time."""
        _check_tokens(x, self.dim, sequence=False)
        states = self._block_states(state)
        new_states = []
        for block, block_state in zip(self.blocks, states, strict=True):
            x, block_state = block.step(x, block_state)
            new_states.append(block_state)
        return x, ScaleState(tuple(new_states))

    def _block_states(self, state: ScaleState | None) -> tuple[BlockState | None, ...]:
        if state is None:
            return (None,) * len(self.blocks)
        if len(state.blocks) != len(self.blocks):
            raise ValueError(f"state has {len(state.blocks)} block states for {len(self.blocks)} blocks")
        return state.blocks
