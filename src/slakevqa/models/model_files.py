"""A model folder's files: checked before they load, and published whole when a run writes them.

Checks name the damaged file in one line instead of a library traceback: a safetensors file cut
short or with a bad header (:func:`check_weight_files`, headers only), a ``.bin`` that
``torch.load(weights_only=True)`` refuses (:func:`unreadable_weights`), and a training output
whose last save was interrupted (:func:`check_not_half_saved`).

Publishing (training's final save and every later one into the same folder)::

    OUTPUT_DIR/.trained.partial/   <- every file written and synced      (start_publish)
    OUTPUT_DIR/.trained.ready/     <- renamed: the commit point          (publish)
    OUTPUT_DIR/<files>             <- moved over the old ones, folder removed (finish_publish)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from slakevqa.errors import UserError
from slakevqa.files import sync_files
from slakevqa.os_errors import require_utf8_name


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout (cut short, bad header), or None; reads the header only."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little")
        if len(head) < 8 or 8 + length > size:
            return f"cut short: {size} bytes, too few for its own header"
        try:
            header = json.loads(handle.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if 8 + length + end != size:
        return f"{'cut short' if 8 + length + end > size else 'longer than its header says'}: {size} bytes, " \
               f"its header describes {8 + length + end}"
    return None


def check_weight_files(folder: Path) -> None:
    """A one-line UserError naming the first damaged ``*.safetensors`` file of ``folder`` (headers only, cheap).

    Without it, safetensors raises a traceback that names no file.
    """
    for path in sorted(Path(folder).glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise UserError(f"{path}: damaged weights file ({problem}); an interrupted download or copy? "
                            "fetch or write it again")


def unreadable_weights(folder: Path, error: Exception) -> UserError | None:
    """The one-line UserError for a ``.bin`` that ``torch.load(weights_only=True)`` refused or could not read.

    ``folder`` is the weight file itself when known, else the folder (its ``*.bin`` files are named).
    None when ``error`` is something else.
    """
    import pickle

    bins = [Path(folder)] if Path(folder).is_file() else sorted(Path(folder).glob("*.bin"))
    where = str(bins[0]) if len(bins) == 1 else f"{folder}/*.bin ({len(bins)} files)"
    if isinstance(error, pickle.UnpicklingError):
        return UserError(f"{where}: refused: this pickle holds more than tensors, and .bin weights are only read "
                         "with torch.load(weights_only=True) (safe); use safetensors weights, or convert the file "
                         "yourself only if you trust its source")
    if isinstance(error, RuntimeError) and "PytorchStreamReader" in str(error):
        return UserError(f"{where}: damaged weights file ({str(error).splitlines()[0]}); fetch or write it again")
    return None


def check_not_half_saved(spec: str | Path | None) -> None:
    """Refuse a folder that is not a whole model: a training output whose save was interrupted (its staged
    files not yet in place), or an adapter folder without its weights (:func:`check_adapter_weights`);
    and a path that is not UTF-8 (it could not be recorded in run_fingerprint.json or results.json).

    Cheap (file names only), so evaluation calls it before claiming its output folder.
    """
    if spec:
        require_utf8_name(spec, "model folder")
    if spec and (Path(spec) / READY_NAME).exists():
        raise UserError(f"{spec}: its last save was interrupted before all files were in place; run the same "
                        "training command again to finish it")
    if spec and (Path(spec) / "adapter_config.json").is_file():
        check_adapter_weights(Path(spec))


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # the names peft loads


def check_adapter_weights(adapter: Path) -> None:
    """A one-line UserError when an adapter folder has no weights file, before its base model loads.

    peft would otherwise load the whole base model first and then fail with a traceback.
    """
    if not any((Path(adapter) / name).is_file() for name in ADAPTER_WEIGHTS):
        raise UserError(f"{adapter}: an adapter folder (adapter_config.json) without its weights "
                        f"({' or '.join(ADAPTER_WEIGHTS)}); an interrupted copy or save? copy the whole folder, "
                        "or point at a checkpoint-N folder of the run")


# ---- the trained model's files, published whole
#
# training.trained_output.save_trained writes into OUTPUT_DIR/.trained.partial, renames it .trained.ready when every file is
# written and synced (the commit point), then moves each file over the old one and removes the folder.
# A kill before the commit leaves the old output untouched (the partial folder is removed by the next
# save); a kill after it leaves .trained.ready, which the next training run (or save) finishes moving,
# and which evaluation refuses to load until then.
PARTIAL_NAME, READY_NAME, MANIFEST_NAME = ".trained.partial", ".trained.ready", ".files.json"
# Files of a saved model of either kind: the ones the new save lacks are removed with the old output.
MODEL_FILE_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json",
                       "generation_config.json", "model.safetensors", "model-*.safetensors",
                       "model.safetensors.index.json", "pytorch_model*.bin")


def start_publish(output_dir: str | Path) -> Path:
    """An empty staging folder beside the output (a stale one from a killed save is removed first)."""
    finish_publish(output_dir)
    stage = Path(output_dir) / PARTIAL_NAME
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def publish(stage: Path, output_dir: str | Path) -> None:
    """Commit the staged files (list, sync, rename the folder), then move them into ``output_dir``."""
    files = sorted(path.name for path in stage.iterdir())
    (stage / MANIFEST_NAME).write_text(json.dumps(files), encoding="utf-8")
    sync_files(stage)
    stage.rename(Path(output_dir) / READY_NAME)
    finish_publish(output_dir)


def finish_publish(output_dir: str | Path) -> None:
    """Move a committed save's files into place; idempotent, so a kill here is finished by the next call.

    Old model files the new save does not have (a full model replaced by an adapter, or the
    reverse) are removed first: left beside the new ones they would change what loads.
    """
    out = Path(output_dir)
    ready = out / READY_NAME
    if not ready.is_dir():
        return
    names = set(json.loads((ready / MANIFEST_NAME).read_text(encoding="utf-8")))
    for pattern in MODEL_FILE_PATTERNS:
        for old in out.glob(pattern):
            if old.name not in names:
                old.unlink()
    moving = [path for path in ready.iterdir() if path.name != MANIFEST_NAME]
    for path in sorted(moving, key=lambda p: (p.suffix != ".safetensors", p.name)):  # weights first
        target = out / path.name
        if path.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
    (ready / MANIFEST_NAME).unlink()
    ready.rmdir()
