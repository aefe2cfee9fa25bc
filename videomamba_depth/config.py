"""Typed, frozen stage configurations built from ``params.yaml`` sections.

Every stage reads exactly one section of ``params.yaml`` into a frozen dataclass. Unknown keys are
rejected (a typo in a sweep such as ``-S train.lrr=1e-3`` must fail loudly, not silently train with the
default), values are checked against the field types, and the resolved config is what gets recorded in
Zarr attributes and checkpoints.

The video lists (``synth.videos``, ``train.videos``, ``evaluate.videos``) live in files of their own,
``data/<section>_videos.yaml`` (:data:`VIDEO_LISTS`), like the manifest: DVC parses ``params.yaml`` once per
stage and records every stage's params in ``dvc.lock``, so lists that grow with the videos would make every
stage's bookkeeping grow with them (README "Many videos, many GPUs"). :func:`load_params` puts each list back
into its section, so each config keeps its ``videos``.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[T, ...]``,
``tuple[T1, T2]``, ``dict[str, T]``, ``Literal[...]`` and nested config dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from videomamba_depth.errors import InputError

PARAMS_FILE = Path("params.yaml")
# Section -> the file holding its ``videos`` (``{videos: ...}``), relative to the params file's folder; the
# stages that read a list depend on its file in dvc.yaml.
VIDEO_LISTS = {section: Path(f"data/{section}_videos.yaml") for section in ("synth", "train", "evaluate")}

C = TypeVar("C", bound="StageConfig")


# libyaml's parser when PyYAML has it: a list or manifest of 10,000 videos parses in well under a second (the
# pure-Python one takes about ten times longer, and every stage parses them). The same YAML either way.
class YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader that also reads YAML 1.2 floats without a dot (``1e-05``) as numbers.

    PyYAML follows YAML 1.1, where ``1e-05`` is a string; DVC (ruamel, YAML 1.2) reads it as a float and
    writes floats that way: ``dvc exp run -S train.lr=1e-5`` leaves ``lr: 1e-05`` in params.yaml.
    """


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
YAML_LOADER = YamlLoader


class ConfigError(InputError):
    """A params section that does not match its config class."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read a params YAML file into a plain dict, with a clear error when it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from exc
    try:
        params = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if "videos" in params:
        raise ConfigError(f"{path}: the video manifest ('videos') now lives in data/manifest.yaml; move the "
                          "section there unchanged (README 'Your own videos')")
    for section, relative in VIDEO_LISTS.items():
        if isinstance(params.get(section), Mapping) and "videos" in params[section]:
            raise ConfigError(f"{path}: {section}.videos now lives in {relative} (as 'videos:'); move it "
                              "there (README 'Your own videos')")
        file = path.parent / relative
        if file.exists():
            section_params = params.get(section)
            params[section] = {**(section_params if isinstance(section_params, Mapping) else {}),
                               "videos": load_video_list(file)}
    return params


def load_video_list(path: str | Path) -> Any:
    """The ``videos`` of a video list file (:data:`VIDEO_LISTS`); an error naming the file when it is not
    ``{videos: ...}``. The section's config checks the list itself."""
    path = Path(path)
    try:
        content = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read video list ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(content, dict) or set(content) != {"videos"}:
        raise ConfigError(f"{path}: expected one key, 'videos' (the list), got "
                          f"{sorted(content) if isinstance(content, dict) else type(content).__name__}")
    return content["videos"]


def write_video_list(section: str, videos: Any, root: str | Path = ".") -> Path:
    """Write ``{videos: videos}`` to ``root/data/<section>_videos.yaml`` (for projects built by code: tests,
    benches); returns its path."""
    path = Path(root) / VIDEO_LISTS[section]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"videos": _plain(videos)}, sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base class: a frozen dataclass whose instances come from one params section."""

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None, where: str = "") -> C:
        """Build and validate a config from a mapping; ``where`` names the section in errors."""
        where = where or cls.__name__
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = {}
        for name, field in known.items():
            if name in values:
                kwargs[name] = _coerce(values[name], hints[name], f"{where}.{name}")
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key '{name}'")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable view (tuples become lists), for attributes and checkpoints."""
        return _plain(dataclasses.asdict(self))


def load_section(
    cls: type[C], section: str, params: Mapping[str, Any] | None = None, *, required: bool = True
) -> C:
    """Load ``params[section]`` (default: ``params.yaml`` in the working directory) into ``cls``.

    ``required=False``: a missing section means every default (sections added after a user's params.yaml).
    """
    params = load_params() if params is None else params
    if section not in params and required:
        raise ConfigError(f"params.yaml: missing section '{section}'")
    return cls.from_dict(params.get(section), where=f"{PARAMS_FILE}: {section}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint``; return it converted (lists to tuples, ints to floats)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, StageConfig):
        return hint.from_dict(value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config field type {hint!r}")
