"""Typed dataclass configs: one definition gives the defaults, the YAML schema and the CLI flags.

Precedence, lowest first: the dataclass defaults, then ``--config FILE.yaml``, then
flags given on the command line. Unknown keys are errors with a "did you mean".

A config field documents itself through ``metadata={"help": ...}``::

    @dataclass
    class EvalConfig:
        batch_size: int = field(default=16, metadata={"help": "questions per forward pass"})

    parser = argparse.ArgumentParser(); add_config_arguments(parser, EvalConfig)
    cfg = config_from_args(EvalConfig, parser.parse_args(["--batch_size", "8"]))

and a YAML file holds the same names::

    # slakevqa eval --config configs/eval_test.yaml
    batch_size: 32
    split: test

Other spellings of a field go in ``metadata={"aliases": ("base",)}``: ``--base`` is then a
flag for the same setting and ``base`` a YAML key for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path

from slakevqa.errors import UserError

_SCALARS = (int, float, str, bool)


def field_types(cls: type) -> dict[str, type]:
    """Resolved annotation of every field (``X | None`` becomes ``X``; lists stay ``list``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _strip_optional(hints[f.name]) for f in dataclasses.fields(cls)}


def _strip_optional(annotation: object) -> object:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def field_aliases(cls: type) -> dict[str, str]:
    """``{alias: field name}`` from each field's ``metadata["aliases"]``."""
    return {alias: f.name for f in dataclasses.fields(cls) for alias in f.metadata.get("aliases", ())}


def canonical_keys(cls: type, data: dict, source: str) -> dict:
    """``data`` with alias keys renamed to their fields; an alias beside its field is an error."""
    aliases, out = field_aliases(cls), {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name in out:
            raise UserError(f"{source}: '{key}' and '{name}' are the same setting; give one of them")
        out[name] = value
    return out


def check_keys(cls: type, data: dict, source: str) -> None:
    """Refuse keys that are not fields of ``cls``, suggesting the closest ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"{source}: unknown key '{key}'{hint}")


def coerce(value: object, kind: object, source: str, key: str) -> object:
    """Check (and gently convert) one value against a field type."""
    if value is None or kind is object:
        return value
    origin = typing.get_origin(kind) or kind
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{source}: key '{key}': expected a list, found {value!r}")
        return list(items) if origin is list else tuple(items)
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"{source}: key '{key}': expected true or false, found {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in _SCALARS and not isinstance(value, kind):
        raise UserError(f"{source}: key '{key}': expected {kind.__name__}, found {value!r}")
    return value


def config_from_dict(cls: type, data: dict, source: str = "config"):
    """Build ``cls`` from a mapping (alias keys allowed), refusing unknown keys and wrong types."""
    data = canonical_keys(cls, data, source)
    check_keys(cls, data, source)
    kinds = field_types(cls)
    return cls(**{k: coerce(v, kinds[k], source, k) for k, v in data.items()})


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return data


def add_config_arguments(parser: argparse.ArgumentParser, cls: type,
                         aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per field (``--name``; booleans get ``--name/--no-name``) plus ``--config``.

    A field's ``metadata["aliases"]`` and ``aliases[field]`` (flag spellings) name the same flag.
    Flags default to "not given" so that :func:`config_from_args` can layer them over YAML.
    """
    parser.add_argument("--config", default=None, help="YAML file with any of these keys")
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        spellings = [f.name, *f.metadata.get("aliases", ())]
        names = [f"--{name}" for name in spellings] + (aliases or {}).get(f.name, [])
        help_text = f.metadata.get("help", "")
        if "(default" not in help_text:
            help_text += f" (default: {_default_of(f)!r})"
        options: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        kind = kinds[f.name]
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **options)
        elif "choices" in f.metadata:
            parser.add_argument(*names, choices=f.metadata["choices"], type=kind, **options)
        else:
            parser.add_argument(*names, type=kind if kind in (int, float) else str, **options)


def _default_of(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def config_from_args(cls: type, args: argparse.Namespace):
    """Defaults, then ``args.config`` (YAML), then the flags actually given."""
    given = {k: v for k, v in vars(args).items() if k not in ("config", "debug")}
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    source = str(args.config) if getattr(args, "config", None) else "command line"
    data = canonical_keys(cls, data, source)
    check_keys(cls, data, source)
    check_keys(cls, given, "command line")
    return config_from_dict(cls, {**data, **given}, source)


def config_to_dict(config: object) -> dict:
    """JSON-ready dict of a config (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
