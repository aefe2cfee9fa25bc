"""Loading third-party checkpoints into (part of) the student, with key-prefix remapping and a clear report.

Typical use: initialise the encoder from another model's checkpoint, e.g. Depth Anything's, whose DINOv2
backbone lives under ``pretrained.*``: ``load_external_checkpoint(model.encoder, path, {"pretrained.":
"backbone."})``. Its ``depth_head.*`` keys are then reported as unexpected, and anything the encoder has that
the file lacks (the adapters) as missing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

# Keys under which training frameworks commonly nest the weights inside a checkpoint file.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module")

# Keys listed per category in a report's summary (the report itself keeps them all).
SUMMARY_KEYS = 10


@dataclass(frozen=True)
class CheckpointReport:
    """What :func:`load_external_checkpoint` did; keys are module keys (after remapping).

    Attributes:
        path: the checkpoint file.
        loaded: keys copied into the module.
        missing: module keys absent from the checkpoint (left as they were).
        unexpected: checkpoint keys the module does not have (ignored).
        mismatched: ``(key, checkpoint shape, module shape)`` for keys present in both with different shapes
            (not loaded).
        remapped: number of checkpoint keys whose prefix was rewritten.
    """

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    remapped: int

    @property
    def complete(self) -> bool:
        """Every module tensor loaded and every checkpoint tensor used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """Multi-line, human-readable report."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [
            f"checkpoint {self.path}: loaded {len(self.loaded)}/{total} module tensors "
            f"({self.remapped} checkpoint keys renamed by the prefix map)"
        ]
        for title, keys in (
            ("missing (module keys not in the checkpoint, left as initialised)", self.missing),
            ("unexpected (checkpoint keys not in the module, ignored)", self.unexpected),
        ):
            if keys:
                more = f", ... and {len(keys) - SUMMARY_KEYS} more" if len(keys) > SUMMARY_KEYS else ""
                lines.append(f"  {title}: {len(keys)}: {', '.join(keys[:SUMMARY_KEYS])}{more}")
        if self.mismatched:
            shown = [
                f"{k} checkpoint {list(a)} vs module {list(b)}" for k, a, b in self.mismatched[:SUMMARY_KEYS]
            ]
            lines.append(f"  shape mismatch (not loaded): {len(self.mismatched)}: {'; '.join(shown)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file (loaded with ``weights_only=True``, on CPU).

    Torch files may nest the weights under one of ``STATE_DICT_KEYS`` (e.g. ``{"model": {...}, "epoch": 3}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; name the file and the cause
        raise ValueError(f"{path}: cannot load as a torch checkpoint with weights_only=True ({exc})") from exc
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        nested = [k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            raise ValueError(
                f"{path}: no state dict found: top-level keys {sorted(map(str, obj))[:20]} are not all "
                f"tensors and none of {list(STATE_DICT_KEYS)} holds one"
            )
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}"
        )
    return dict(obj)


def remap_keys(state: Mapping[str, Tensor], prefix_map: Mapping[str, str]) -> tuple[dict[str, Tensor], int]:
    """Rewrite key prefixes (the first matching ``from`` prefix wins); returns the new dict and the count."""
    out, renamed = {}, 0
    for key, value in state.items():
        for old, new in prefix_map.items():
            if key.startswith(old):
                key, renamed = new + key[len(old) :], renamed + 1
                break
        if key in out:
            raise ValueError(f"two checkpoint keys map to '{key}'; check the prefix map {dict(prefix_map)}")
        out[key] = value
    return out, renamed


def load_external_checkpoint(
    module: nn.Module,
    path: str | Path,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = False,
) -> CheckpointReport:
    """Load the tensors of a checkpoint file that match ``module``'s state dict after prefix remapping.

    Args:
        module: the model or submodule to load into (e.g. ``model.encoder``).
        path: ``.safetensors`` or torch file (see :func:`read_state_dict`).
        prefix_map: ``{checkpoint prefix: module prefix}``; default ``{"pretrained.": "backbone."}``.
        strict: raise (loading nothing) unless every module tensor is matched by exactly one checkpoint
            tensor of the same shape. Otherwise load what matches and report the rest.

    Returns:
        The report; its summary is also printed to stderr.
    """
    prefix_map = {"pretrained.": "backbone."} if prefix_map is None else prefix_map
    state, renamed = remap_keys(read_state_dict(path), prefix_map)
    target = module.state_dict()
    loaded, mismatched = [], []
    for key, value in state.items():
        if key in target:
            if tuple(value.shape) == tuple(target[key].shape):
                loaded.append(key)
            else:
                mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    report = CheckpointReport(
        path=str(path),
        loaded=tuple(loaded),
        missing=tuple(k for k in target if k not in state),
        unexpected=tuple(k for k in state if k not in target),
        mismatched=tuple(mismatched),
        remapped=renamed,
    )
    if strict and not report.complete:
        raise ValueError(f"strict checkpoint loading failed:\n{report.summary()}")
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    print(report.summary(), file=sys.stderr)
    return report
