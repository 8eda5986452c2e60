"""Reading a ``--config FILE.yaml``: UTF-8 text, one value per key, numbers as Hugging Face users write them.

PyYAML follows YAML 1.1, which differs from what users of other tools expect in two ways that
would pass silently, so the loader here closes both:

- ``learning_rate: 3e-4`` is a *string* in YAML 1.1 (its floats need a dot, and a sign in the
  exponent); YAML 1.2, Hugging Face's examples and every JSON reader say it is a number. Plain
  scalars in the 1.2 exponent spelling resolve to floats here.
- a key given twice keeps the last value without a word. Here it is refused with both lines.

Values are checked against the config's types afterwards (:func:`slakevqa.config.coerce`):
this module only turns the file into a mapping, or into one line that says why it cannot.

>>> read_config_text("lr: 3e-4\\nbf16: yes\\n", "run.yaml")
{'lr': 0.0003, 'bf16': True}
>>> read_config_text("lr: 1\\nseed: 3\\nlr: 2\\n", "run.yaml")
Traceback (most recent call last):
slakevqa.errors.UserError: run.yaml: key 'lr' given twice (lines 1 and 3); keep one
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from slakevqa.errors import UserError

# YAML 1.2's exponent spelling that 1.1 leaves as text: 3e-4, 1e3, 1.0e5, .5E-2 (those with a dot and a signed
# exponent, and every float without an exponent, 1.1 already reads).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"key {key!r} given twice")
        self.key, self.first, self.second = key, first, second


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads 1.2's exponent floats and refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[object, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides on purpose
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _DuplicateKey(key, lines[key], line)
                lines[key] = line
            except TypeError:  # an unhashable key: the base class says so
                continue
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; a missing, unreadable, non-UTF-8 or malformed file is one line.

    A UTF-8 byte-order mark (Windows editors write one) is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                        "save the file as UTF-8") from None
    return read_config_text(text, str(path))


def read_config_text(text: str, source: str) -> dict:
    """The mapping of config keys that YAML ``text`` holds (``source`` names it in errors)."""
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as duplicate:
        lines = f"lines {duplicate.first} and {duplicate.second}" if duplicate.first != duplicate.second \
            else f"line {duplicate.first}"
        raise UserError(f"{source}: key {_name(duplicate.key)} given twice ({lines}); keep one") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source}: invalid YAML{where} ({problem})") from None
    if data is None:  # an empty file, or only comments: every default
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of config keys, found {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise UserError(f"{source}: key {key!r} is not a name; config keys are setting names such as lr")
    return data


def _name(key: object) -> str:
    return f"'{key}'" if isinstance(key, str) else repr(key)
