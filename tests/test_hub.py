"""`--data_source hf`: the hub code path, run against a local folder laid out like BoKelvin/SLAKE.

No hub is reachable here, so the test builds the hub's own cache layout
(``datasets--BoKelvin--SLAKE/{refs/main, snapshots/<commit>/...}``) with the repo's
files, zipped images included, and lets huggingface_hub resolve it offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import write_mini_slake
from slakevqa.data.hub import fetch_slake
from slakevqa.data.slake import load_split
from slakevqa.errors import DataError, UserError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def zip_folder(folder: Path, archive: Path, prefix: str) -> None:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


def write_fake_hub(tmp_path: Path, image_prefix: str = "imgs") -> Path:
    """A hub cache holding BoKelvin/SLAKE as the hub serves it: JSON + mask.txt + imgs.zip + KG.zip."""
    source = write_mini_slake(tmp_path / "source", validation_name="validation.json")
    (source / "KG").mkdir()
    (source / "KG/en_organ.csv").write_text("organ#attribute#value\nLiver#function#detoxicate\n", encoding="utf-8")
    cache = tmp_path / "hub"
    repo = cache / "datasets--BoKelvin--SLAKE"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(COMMIT)
    for name in ("train.json", "validation.json", "test.json", "mask.txt"):
        shutil.copyfile(source / name, snapshot / name)
    zip_folder(source / "imgs", snapshot / "imgs.zip", image_prefix)
    zip_folder(source / "KG", snapshot / "KG.zip", "KG")
    (snapshot / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    return cache


def test_fetch_unpacks_once_into_a_loadable_layout(tmp_path: Path) -> None:
    hub = write_fake_hub(tmp_path)
    root = fetch_slake(hub_cache_dir=hub, cache_dir=tmp_path / "cache", local_files_only=True)
    assert root == tmp_path / "cache" / "BoKelvin--SLAKE" / COMMIT
    assert (root / "imgs/xmlab0/source.jpg").is_file() and (root / "KG/en_organ.csv").is_file()
    assert [s.qid for s in load_split(root, "validation")] == [10, 11]
    assert len(load_split(root, "train", "all")) == 6
    stamp = (root / "imgs/xmlab0/source.jpg").stat().st_mtime_ns
    assert fetch_slake(hub_cache_dir=hub, cache_dir=tmp_path / "cache", local_files_only=True) == root
    assert (root / "imgs/xmlab0/source.jpg").stat().st_mtime_ns == stamp  # reused, not unpacked again
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".unpacking-")]


@pytest.mark.parametrize("prefix", ["", "Slake1.0/imgs"])
def test_archives_with_other_top_levels(tmp_path: Path, prefix: str) -> None:
    hub = write_fake_hub(tmp_path, image_prefix=prefix)
    root = fetch_slake(hub_cache_dir=hub, cache_dir=tmp_path / "cache", local_files_only=True)
    assert len(load_split(root, "test")) == 2


def test_zip_slip_is_refused(tmp_path: Path) -> None:
    hub = write_fake_hub(tmp_path)
    archive = hub / "datasets--BoKelvin--SLAKE" / "snapshots" / COMMIT / "KG.zip"
    with zipfile.ZipFile(archive, "a") as bundle:
        bundle.writestr("../../evil.txt", "x")
    with pytest.raises(DataError, match="outside the dataset folder"):
        fetch_slake(hub_cache_dir=hub, cache_dir=tmp_path / "cache", local_files_only=True)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "cache" / "BoKelvin--SLAKE" / COMMIT).exists()


def test_unreachable_hub_is_a_clear_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="could not fetch dataset 'BoKelvin/SLAKE'.*--slake_root"):
        fetch_slake(hub_cache_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", local_files_only=True)


def test_cli_data_source_hf_offline(tmp_path: Path) -> None:
    hub = write_fake_hub(tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "SLAKEVQA_CACHE": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "slakevqa", "stats", "--data_source", "hf", "--json"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["validation"]["records"] == 2
