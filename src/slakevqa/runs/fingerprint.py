"""Run fingerprints: what decides a run's results, recorded in its output folder on the first run.

A rerun into the same folder resumes (appends answers, continues from a checkpoint)
only when its fingerprint equals the recorded one; anything else stops before the
model is loaded, with one line naming what differs::

    runs/eval/run_fingerprint.json: this folder holds a run with other settings (prompt_style: 'short' -> 'long');
    pass --overwrite to discard its results and start fresh, or give another --output_dir

The file (``run_fingerprint.json``)::

    {"format": "slakevqa.run_fingerprint", "version": 1, "kind": "eval",
     "values": {"model": "runs/lora", "model_weights": "5e0c...", "split_sha256": "3f2a...",
                "prompt_style": "short", "prompt_version": "short@v1", ...}}

Which config fields count is decided next to each config (``RESULT_FIELDS`` /
``NEUTRAL_FIELDS`` in ``evaluation/config.py`` and ``training/config.py``).
A model folder is identified by its weights fingerprint (:mod:`slakevqa.models.fingerprint`),
so a moved folder still resumes; a hub id or an unsaved in-memory model by its name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from slakevqa.errors import UserError
from slakevqa.files import write_json_atomic

FINGERPRINT_NAME = "run_fingerprint.json"
FORMAT, VERSION = "slakevqa.run_fingerprint", 1  # the file format's name, kept from before the runs package


def config_values(config: object, result_fields: tuple[str, ...]) -> dict:
    """The fields of ``config`` that decide its results."""
    from slakevqa.config import setting_value

    return {name: setting_value(config, name) for name in result_fields}


def model_values(spec: str | None, base: str | None = None) -> dict:
    """``model`` (as given) and ``model_weights`` (sha256 of a local folder, plus a local adapter base; else None).

    >>> model_values("owner/hub-model")
    {'model': 'owner/hub-model', 'model_weights': None}
    """
    from slakevqa.models.fingerprint import model_fingerprint

    folder = Path(spec) if spec else None
    if folder is None or not folder.is_dir():
        return {"model": spec, "model_weights": None}
    folders = [folder]
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():  # an adapter: its base's weights decide the answers too
        try:
            named = base or json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError):
            named = base
        if named and Path(named).is_dir():
            folders.insert(0, Path(named))
    return {"model": spec, "model_weights": model_fingerprint(*folders)["sha256"]}


def vocab_sha256(answers: tuple[str, ...]) -> str:
    """sha256 of a closed vocabulary's answers, in order (they are the CLOSED candidates)."""
    return hashlib.sha256(json.dumps(list(answers), ensure_ascii=False).encode()).hexdigest()


def make_fingerprint(kind: str, values: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind, "values": values}


def read_fingerprint(path: Path) -> dict | None:
    """The recorded fingerprint, None when there is none; an unreadable one is a one-line error."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable run fingerprint ({type(error).__name__}); "
                        "pass --overwrite to start this folder afresh, or give another --output_dir") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("values"), dict):
        raise UserError(f"{path}: not a slakevqa run fingerprint; pass --overwrite or give another --output_dir")
    return data


def differences(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for every value that differs (a model folder is compared by its weights).

    >>> differences({"kind": "eval", "values": {"split": "test"}}, {"kind": "eval", "values": {"split": "validation"}})
    ["split: 'test' -> 'validation'"]
    """
    if old.get("kind") != new.get("kind"):
        return [f"kind: {old.get('kind')!r} -> {new.get('kind')!r}"]
    a, b = old["values"], new["values"]
    out = []
    if a.get("model_weights") and b.get("model_weights"):  # folders: the weights decide, not where they lie
        if a["model_weights"] != b["model_weights"]:
            out.append(f"model: {a.get('model')} (weights {a['model_weights'][:12]}) -> "
                       f"{b.get('model')} (weights {b['model_weights'][:12]})")
        skip = {"model", "model_weights"}
    else:
        skip = set()
    for key in [*b, *(k for k in a if k not in b)]:
        if key not in skip and a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return out


def refuse_other_kind(path: Path, old: dict | None, kind: str) -> None:
    """A UserError when ``path`` records a run of another kind, ``--overwrite`` or not.

    An ``eval`` into a training folder would replace the training's fingerprint (the training could no
    longer resume) and its ``--overwrite`` would clear what the training wrote; each run gets its own folder.
    """
    if old is not None and old.get("kind") != kind:
        raise UserError(f"{path}: this folder holds a {old.get('kind')} run; a {kind} run writes into a folder "
                        f"of its own (a subfolder such as {path.parent / kind} will do)")


def claim_folder(out: Path, fingerprint: dict, has_results: Callable[[], bool], clear: Callable[[], None],
                 overwrite: bool = False, replace_changed: bool = False, write: bool = True) -> bool:
    """Make ``out`` this run's folder; True when it resumes earlier results of the same run.

    Same fingerprint: resume. Different (or none recorded) with results in the folder: refused,
    unless ``overwrite`` (always start fresh) or ``replace_changed`` (fresh only when it differs:
    training's own final evaluation). A folder of another kind of run is refused, ``overwrite`` or not. ``clear`` deletes the previous run's outputs; it runs before
    the new fingerprint is written, so a kill in between never pairs the new fingerprint with old
    results. ``write=False`` (non-main processes) only checks.
    """
    path = out / FINGERPRINT_NAME
    old = read_fingerprint(path)
    refuse_other_kind(path, old, fingerprint["kind"])
    changed = differences(old, fingerprint) if old is not None else ["no fingerprint recorded"]
    if not changed and not overwrite:
        return has_results()
    if has_results() and not (overwrite or replace_changed):
        what = ("results from a run without a fingerprint (an older slakevqa)" if old is None
                else f"a run with other settings ({'; '.join(changed)})")
        raise UserError(f"{path if old is not None else out}: this folder holds {what}; pass --overwrite to "
                        "discard its results and start fresh, or give another --output_dir")
    if write:
        clear()
        write_json_atomic(path, fingerprint)
    return False
