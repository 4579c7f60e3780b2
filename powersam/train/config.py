"""Typed training configs: (nested) dataclasses loaded from YAML, with ``--set key.sub=value`` overrides.

No registry: a stage defines its config as plain dataclasses and calls :func:`load_config`. Values are
checked against the field annotations (``int``, ``float``, ``str``, ``bool``, ``Path``, ``Optional[...]``,
``list[...]``, ``tuple[...]``, ``dict[str, ...]``, ``Literal[...]``, nested dataclasses, ``Any``), and a key
that is not a field is an error naming the key and the file, with a close match suggested when there is one.

``1e-3`` is a string to PyYAML (YAML 1.1 floats need a dot); float fields accept it anyway.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.999)

    @dataclass
    class StageConfig:
        data_root: Path
        optim: Optim = field(default_factory=Optim)

    cfg = load_config("stage1.yaml", StageConfig, overrides=["optim.lr=2e-4"])
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the source (file or ``--set``)."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` (as parsed from YAML) checked and converted to the annotation ``tp``."""
    where = f"config key '{key}' in {source}"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping (section of {tp.__name__}), got {value!r}")
        return _from_dict(value, tp, source, prefix=key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{where}: {value!r} does not fit {_describe(tp)} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        value_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, value_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r} (quote it in YAML)")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where} must be a path string, got {value!r}")
        return Path(value)
    raise TypeError(f"{where}: unsupported annotation {_describe(tp)}")


def _unknown_key(key: str, valid: Sequence[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _from_dict(data: dict, cls: type, source: str, prefix: str = "") -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            raise _unknown_key(f"{prefix}{name}", list(fields), source)
        kwargs[name] = _convert(value, hints[name], f"{prefix}{name}", source)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config key(s) {', '.join(prefix + m for m in missing)} missing in {source} (no default)")
    return cls(**kwargs)


def config_from_dict(data: Optional[dict], cls: type[T], source: str = "<dict>") -> T:
    """Build the dataclass ``cls`` from a plain dict (checked like :func:`load_config`)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls must be a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level of {source} must be a mapping, got {type(data).__name__}")
    return _from_dict(data, cls, source)


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data for a dataclass config (tuples → lists, paths → strings)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any, path: Optional[Union[str, Path]] = None) -> str:
    """The config as YAML text (field order kept); also written to ``path`` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    return text


def _field_type(cls: type, dotted: str, source: str) -> Any:
    """The annotation at ``dotted`` (``a.b.c``) inside ``cls``; raises for a key that is not a field."""
    tp: Any = cls
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                raise _unknown_key(".".join(walked), names, source)
            tp = _hints(tp)[part]
        elif typing.get_origin(tp) is dict or tp is dict:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            raise _unknown_key(".".join(walked), [], source)
        # Optional[Section] → Section, so that keys below an optional section can be set.
        if typing.get_origin(tp) in (Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(options) == 1:
                tp = options[0]
    return tp


def _is_str_field(tp: Any) -> bool:
    if tp in (str, Path):
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return all(a in (str, Path, type(None)) for a in typing.get_args(tp))
    return False


def apply_overrides(cfg: T, overrides: Sequence[str], source: str = "--set") -> T:
    """A new config with each ``"key.sub=value"`` applied (value parsed as YAML, except for string fields,
    which take the text as it is; ``null`` gives ``None`` for optional fields)."""
    cls = type(cfg)
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} in {source} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        tp = _field_type(cls, dotted, source)
        value = raw if _is_str_field(tp) and raw.strip() not in ("null", "~") else yaml.safe_load(raw)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return config_from_dict(data, cls, source=f"{source} overrides")


def load_config(path: Union[str, Path], cls: type[T], overrides: Sequence[str] = ()) -> T:
    """Read the YAML file ``path`` into the dataclass ``cls``, then apply ``overrides`` (``key.sub=value``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: an unknown key (the message names it and the file), a missing required key, or a value
            of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    cfg = config_from_dict(data, cls, source=str(path))
    return apply_overrides(cfg, overrides) if overrides else cfg
