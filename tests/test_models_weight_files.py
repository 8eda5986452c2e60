"""A model folder's weight files checked before they load (src/slakevqa/models/model_files.py, through
``load_model``): a damaged one is one line naming the file, whether a safetensors file cut short (in the model
or in its LoRA adapter) or a ``.bin`` whose pickle holds more than tensors. ``lora``: conftest.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from slakevqa.errors import UserError
from slakevqa.models.loading import load_model

quiet = {"log": lambda line: None}


class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this ran",))


def cut_in_half(folder: Path) -> Path:
    path = next(folder.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def pickled_bin(folder: Path) -> Path:
    for path in folder.glob("*.safetensors"):
        path.unlink()
    path = folder / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"weight": Payload()}))
    return path


DAMAGE = {  # which folder is damaged, how -> the file the message names, what it says
    "model safetensors cut short": ("base", cut_in_half, "damaged weights file (cut short"),
    "model .bin with a pickled object": ("base", pickled_bin, "refused: this pickle holds more than tensors"),
    "adapter safetensors cut short": ("adapter", cut_in_half, "damaged weights file (cut short"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_weights_are_one_line_naming_the_file(lora: dict, tmp_path: Path, case: str) -> None:
    import shutil

    which, damage, says = DAMAGE[case]
    folders = {name: shutil.copytree(folder, tmp_path / name) for name, folder in lora.items()}
    path = damage(folders[which])
    with pytest.raises(UserError) as error:
        load_model(folders["adapter"], base=str(folders["base"]), device="cpu", **quiet)
    assert str(error.value).startswith(f"{path}: {says}") and "\n" not in str(error.value)
