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
    batch_size: 64
    split: test

Settings that several configs share live in one group dataclass (``inputs: InputSettings``,
``attention: AttentionSettings``, ``data: DataSettings``):
its fields are flat keys and flags of every config that holds it (``mask_mode: crop``, not
``inputs: {mask_mode: crop}``), defined and validated once.

Other spellings of a field go in ``metadata={"aliases": ("learning_rate",)}``: ``--learning_rate``
is then a flag for the same setting and ``learning_rate`` a YAML key for it. A spelling that also
changes the value (HF's ``bf16: true`` is ``precision: bf16``) is a :class:`Translation` in the
config's ``TRANSLATIONS``.

Values are checked once, whoever gives them: :func:`coerce` reads each YAML or Python value as its
field's type (``3e-4`` and ``'3e-4'`` are floats, ``yes``/``'True'`` booleans; null only where the
field is ``X | None``), and each dataclass's ``__post_init__`` refuses non-finite numbers and
out-of-range values (:func:`check_rules`) before anything is loaded. YAML files are read by
:mod:`slakevqa.config_yaml` (UTF-8, no key twice). Boolean flags take ``--name``,
``--name true|false`` (Hugging Face's ``--bf16 True``) and ``--no-name``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from slakevqa.config_yaml import load_yaml
from slakevqa.errors import UserError

_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class Setting:
    """One key of a config: its field, resolved type and the group attribute holding it (None: top level)."""

    name: str
    field: dataclasses.Field
    kind: object
    group: str | None = None
    nullable: bool = False  # annotated ``X | None``: YAML's null (and Python's None) is a value


@dataclass(frozen=True)
class Translation:
    """Another tool's key whose value maps onto ours: ``to(value)`` gives ``{our key: our value}``.

    >>> Translation(bool, "HF's bf16", lambda on: {"precision": "bf16" if on else "fp32"}).to(True)
    {'precision': 'bf16'}
    """

    kind: type
    help: str
    to: Callable[[Any], dict]


def settings_of(cls: type) -> list[Setting]:
    """Every setting of ``cls`` in definition order, the fields of group dataclasses flattened in."""
    hints = typing.get_type_hints(cls)
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        kind = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            out += [dataclasses.replace(s, group=f.name) for s in settings_of(kind)]
        else:
            out.append(Setting(f.name, f, kind, nullable=_allows_none(hints[f.name])))
    return out


def field_types(cls: type) -> dict[str, type]:
    """Resolved annotation of every setting (``X | None`` becomes ``X``; lists stay ``list``)."""
    return {s.name: s.kind for s in settings_of(cls)}


def _allows_none(annotation: object) -> bool:
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    return union and type(None) in typing.get_args(annotation)


def _strip_optional(annotation: object) -> object:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def setting_value(config: object, name: str) -> object:
    """The value of setting ``name`` wherever it lives in ``config`` (top level or a group)."""
    for s in settings_of(type(config)):
        if s.name == name:
            return getattr(getattr(config, s.group) if s.group else config, name)
    raise KeyError(name)


def field_aliases(cls: type) -> dict[str, str]:
    """``{alias: setting name}`` from each field's ``metadata["aliases"]``."""
    return {alias: s.name for s in settings_of(cls) for alias in s.field.metadata.get("aliases", ())}


def translations(cls: type) -> dict[str, Translation]:
    return dict(getattr(cls, "TRANSLATIONS", {}))


def canonical_keys(cls: type, data: dict, source: str) -> dict:
    """``data`` with alias and translated keys turned into settings; two spellings of one setting is an error."""
    aliases, translated, out, given_as = field_aliases(cls), translations(cls), {}, {}
    for key, value in data.items():
        if key in translated:
            pairs = translated[key].to(coerce(value, translated[key].kind, source, key)).items()
        else:
            pairs = [(aliases.get(key, key), value)]
        for name, new in pairs:
            if name in out:
                raise UserError(f"{source}: '{key}' and '{given_as[name]}' both set {name}; give one of them")
            out[name], given_as[name] = new, key
    return out


def known_keys(cls: type) -> list[str]:
    """Every key ``cls`` accepts: its settings, their aliases and the translated keys."""
    return [s.name for s in settings_of(cls)] + list(field_aliases(cls)) + list(translations(cls))


def check_keys(cls: type, data: dict, source: str) -> None:
    """Refuse keys that are not settings of ``cls``, suggesting the closest of every accepted spelling."""
    names = {s.name for s in settings_of(cls)}
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, known_keys(cls), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"{source}: unknown key '{key}'{hint}")


def check_choices(config: object) -> None:
    """Every field with ``metadata["choices"]`` holds one of them (YAML and Python callers bypass argparse)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise UserError(f"--{f.name} must be one of {', '.join(map(str, f.metadata['choices']))}, got {value!r}")


def check_rules(config: object, rules: tuple[tuple[str, Callable[[Any], bool], str], ...]) -> None:
    """Every number of ``config`` finite, then ``rules``: ``(field, test, what it must be)``; the first failure
    is a one-line error. Flags, YAML and Python callers all pass here (``__post_init__``), so all get it.

    nan passes no comparison and inf passes ``> 0``: a rule alone would let ``--lr inf`` through, to
    train an adapter of NaNs. So no float is taken unless finite, whatever its rules say.

    >>> from slakevqa.inputs.settings import InputSettings
    >>> InputSettings(mask_pad_ratio=float("inf"))
    Traceback (most recent call last):
    slakevqa.errors.UserError: --mask_pad_ratio must be a finite number, got inf
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{f.name} must be a finite number, got {value!r}")
    for name, ok, requirement in rules:
        if not ok(getattr(config, name)):
            raise UserError(f"--{name} must be {requirement}, got {getattr(config, name)!r}")


# YAML 1.1's booleans (what PyYAML reads unquoted) and Hugging Face's spellings of them on the command line.
BOOLEAN_WORDS: dict[str, bool] = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_bool(value: object) -> bool | None:
    """``value`` as a boolean where it spells one (any case), else None.

    >>> parse_bool("Yes"), parse_bool(False), parse_bool("OFF"), parse_bool("maybe"), parse_bool(1)
    (True, False, False, None, None)
    """
    if isinstance(value, bool):
        return value
    return BOOLEAN_WORDS.get(value.strip().lower()) if isinstance(value, str) else None


SEED_RULE = ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32) (numpy's and torch's seed range)")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """The seed rule of the configs for a plain flag (``score``, ``synth``, ``init-tiny``).

    >>> check_seed(-1)
    Traceback (most recent call last):
    slakevqa.errors.UserError: --seed must be in [0, 2**32) (numpy's and torch's seed range), got -1
    """
    if not SEED_RULE[1](seed):
        raise UserError(f"{flag} must be {SEED_RULE[2]}, got {seed!r}")


def coerce(value: object, kind: object, source: str, key: str, nullable: bool = False,
           choices: tuple | None = None) -> object:
    """Check (and gently convert) one value against a field type.

    Values are read as YAML and Hugging Face users mean them: a number written as text (``'3e-4'``) is a
    number, a whole float (``1e3``) an int, ``yes``/``'True'``/``off`` booleans. null is a value only of
    a field annotated ``X | None``; elsewhere it is refused, not passed on to fail later.

    >>> coerce("3e-4", float, "run.yaml", "lr"), coerce("Yes", bool, "run.yaml", "bf16"), coerce(1e3, int, "", "")
    (0.0003, True, 1000)
    >>> coerce(None, float, "run.yaml", "lr")
    Traceback (most recent call last):
    slakevqa.errors.UserError: run.yaml: key 'lr': expected float, found no value (null); give one, or leave the key out
    """
    where = f"{source}: key '{key}'"
    if value is None and (nullable or kind is object):
        return None
    if value is None:
        raise UserError(f"{where}: expected {_expected(kind, choices)}, found no value (null); give one, "
                        "or leave the key out")
    if kind is object:
        return value
    origin = typing.get_origin(kind) or kind
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{where}: expected a list, found {value!r}")
        return list(items) if origin is list else tuple(items)
    if kind is bool:
        flag = parse_bool(value)
        if flag is None:
            raise UserError(f"{where}: expected true or false, found {value!r}")
        return flag
    if kind in (int, float):
        number = _number(value, kind)
        if number is None:
            raise UserError(f"{where}: expected {kind.__name__}, found {value!r}")
        return number
    if kind in _SCALARS and not isinstance(value, kind):
        raise UserError(f"{where}: expected {_expected(kind, choices)}, found {value!r}")
    return value


def _number(value: object, kind: type) -> int | float | None:
    """``value`` as a ``kind`` (int or float) where it is one, else None; booleans are not numbers."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is float:
        return float(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None  # inf and nan are not whole: refused
    return value


def _expected(kind: object, choices: tuple | None) -> str:
    if choices:
        return f"one of {', '.join(map(str, choices))}"
    if kind is bool:
        return "true or false"
    return getattr(kind, "__name__", str(kind))


def config_from_dict(cls: type, data: dict, source: str = "config"):
    """Build ``cls`` from a flat mapping (aliases and translated keys allowed), refusing unknown keys and wrong types."""
    data = canonical_keys(cls, data, source)
    check_keys(cls, data, source)
    top: dict = {}
    groups: dict[str, dict] = {}
    for s in settings_of(cls):
        if s.name in data:
            target = groups.setdefault(s.group, {}) if s.group else top
            target[s.name] = coerce(data[s.name], s.kind, source, s.name, s.nullable, s.field.metadata.get("choices"))
    hints = typing.get_type_hints(cls)
    for name, values in groups.items():
        top[name] = _strip_optional(hints[name])(**values)
    return cls(**top)


def make_config(cls: type, **settings: object):
    """``cls`` from flat keyword settings, as a YAML file would give them (paths may be ``Path``).

    >>> from slakevqa.evaluation.config import EvalConfig
    >>> make_config(EvalConfig, mask_mode="crop", batch_size=8).inputs.mask_mode
    'crop'
    """
    values = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    return config_from_dict(cls, values, f"{cls.__name__}(...)")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type,
                         aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per setting (``--name``; booleans ``--name [true|false]`` and ``--no-name``) plus ``--config``.

    A field's ``metadata["aliases"]`` and ``aliases[field]`` (flag spellings) name the same flag;
    each of the config's ``TRANSLATIONS`` is a flag of its own, translated by :func:`config_from_args`.
    Flags default to "not given" so that :func:`config_from_args` can layer them over YAML.
    """
    parser.add_argument("--config", default=None, help="YAML file with any of these keys")
    add_setting_flags(parser, cls, aliases, layered=True)
    for key, translation in translations(cls).items():
        options = {"dest": f"translated:{key}", "default": argparse.SUPPRESS, "help": translation.help}
        if translation.kind is not bool:
            options["metavar"] = key.upper()
        _add_flag(parser, [f"--{key}"], translation.kind, None, options, bool_value=True)


def add_setting_flags(parser, cls: type, aliases: dict[str, list[str]] | None = None, layered: bool = False) -> None:
    """One flag per setting of ``cls`` (``parser`` may be an argument group).

    ``layered``: flags default to "not given" (a config file sits below them); else to the field's default.
    """
    for s in settings_of(cls):
        spellings = [s.name, *s.field.metadata.get("aliases", ())]
        names = [f"--{name}" for name in spellings] + (aliases or {}).get(s.name, [])
        help_text = s.field.metadata.get("help", "")
        if "(default" not in help_text:
            help_text += f" (default: {_default_of(s.field)!r})"
        default = argparse.SUPPRESS if layered else _default_of(s.field)
        options: dict = {"dest": s.name, "default": default, "help": help_text}
        _add_flag(parser, names, s.kind, s.field.metadata.get("choices"), options, bool_value=layered)


def _add_flag(parser: argparse.ArgumentParser, names: list[str], kind: object, choices, options: dict,
              bool_value: bool = False) -> None:
    if kind is bool:
        parser.add_argument(*names, action=BooleanFlag if bool_value else argparse.BooleanOptionalAction, **options)
    elif choices:
        parser.add_argument(*names, choices=choices, type=kind, **options)
    else:
        parser.add_argument(*names, type=kind if kind in (int, float) else str, **options)


class BooleanFlag(argparse.BooleanOptionalAction):
    """``--name``, ``--name VALUE`` (Hugging Face's ``--bf16 True``; yes/no/on/off too) or ``--no-name``.

    Only for verbs without positional arguments (train and eval), where an optional value cannot
    swallow one. A value it cannot read becomes a :class:`RefusedFlag`, raised by
    :func:`config_from_args` as one line (argparse's own errors print the usage first).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, metavar="true|false", **kwargs)
        self.nargs = "?"

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        negative = option_string.startswith("--no-")
        value = (not negative) if values is None else parse_bool(values)
        if values is not None and negative:
            value = RefusedFlag(f"{option_string} takes no value, got {values!r}; write {option_string} alone, "
                                f"or --{option_string[5:]} false")
        elif value is None:
            value = RefusedFlag(f"{option_string} expects true or false (or no value), got {values!r}")
        setattr(namespace, self.dest, value)


class RefusedFlag(str):
    """A flag value refused while parsing, kept as its message until :func:`config_from_args` raises it."""


def _default_of(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def config_from_args(cls: type, args: argparse.Namespace):
    """Defaults, then ``args.config`` (YAML), then the flags actually given; a refused flag value fails first."""
    given = {k.removeprefix("translated:"): v for k, v in vars(args).items() if k not in ("config", "debug")}
    refused = [value for value in given.values() if isinstance(value, RefusedFlag)]
    if refused:
        raise UserError(refused[0])
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    source = str(args.config) if getattr(args, "config", None) else "command line"
    data = canonical_keys(cls, data, source)
    check_keys(cls, data, source)
    given = canonical_keys(cls, given, "command line")
    check_keys(cls, given, "command line")
    return config_from_dict(cls, {**data, **given}, source)


def config_to_dict(config: object) -> dict:
    """JSON-ready flat dict of a config, groups flattened (paths as strings)."""
    values = {s.name: setting_value(config, s.name) for s in settings_of(type(config))}
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
