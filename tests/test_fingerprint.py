"""The model fingerprint: config files and safetensors headers, not the weights' bytes, nor unrelated files."""

from __future__ import annotations

import json
from pathlib import Path

from slakevqa.config import make_config
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.evaluate import model_provenance
from slakevqa.models.fingerprint import hub_revision, model_fingerprint, safetensors_header

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_safetensors(path: Path, shape: list[int] | tuple[int, int], fill: bytes = b"\0") -> None:
    """A valid one-tensor float32 safetensors file (8-byte little-endian header length, JSON header, data)."""
    size = 4 * shape[0] * shape[1]
    header = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, size]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + fill * size)


def model_folder(folder: Path, shape: tuple[int, int] = (2, 3)) -> Path:
    write_safetensors(folder / "model.safetensors", shape)
    (folder / "config.json").write_text('{"model_type": "llava"}')
    return folder


def test_headers_and_weights_change_it_and_unrelated_files_do_not(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    before = model_fingerprint(folder)
    assert before["covers"] == [str(folder)] and before["hub_revisions"] == {}
    assert safetensors_header(folder / "model.safetensors").startswith(b'{"w"')
    (folder / "README.md").write_text("notes")
    (folder / "trainer_state.json").write_text("{}")
    assert model_fingerprint(folder) == before
    write_safetensors(folder / "model.safetensors", [2, 3], fill=b"\1")  # same header, other values (another run)
    assert model_fingerprint(folder)["sha256"] != before["sha256"]
    write_safetensors(folder / "model.safetensors", [2, 3])
    assert model_fingerprint(folder) == before
    write_safetensors(folder / "model.safetensors", [3, 2])
    assert model_fingerprint(folder)["sha256"] != before["sha256"]
    assert model_fingerprint(model_folder(tmp_path / "copy"))["sha256"] == before["sha256"]  # paths not hashed


def test_adapter_and_its_config_count(tmp_path: Path) -> None:
    base, adapter = model_folder(tmp_path / "base"), tmp_path / "adapter"
    write_safetensors(adapter / "adapter_model.safetensors", [8, 2])
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    with_adapter = model_fingerprint(base, adapter)
    assert with_adapter["covers"] == [str(base), str(adapter)]
    assert with_adapter["sha256"] != model_fingerprint(base, None)["sha256"]
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    assert model_fingerprint(base, adapter)["sha256"] != with_adapter["sha256"]


def test_hub_snapshot_names_its_commit(tmp_path: Path) -> None:
    snapshot = model_folder(tmp_path / "models--org--m" / "snapshots" / COMMIT)
    assert hub_revision(snapshot) == COMMIT and hub_revision(tmp_path) is None
    assert model_fingerprint(snapshot)["hub_revisions"] == {str(snapshot): COMMIT}


def test_a_model_given_in_process_is_fingerprinted_by_its_saved_folder(tmp_path: Path) -> None:
    saved = model_folder(tmp_path / "run")
    provenance = model_provenance(make_config(EvalConfig, model_id_or_ckpt=str(saved), output_dir=str(tmp_path / "e")), None)
    assert provenance["model"] == f"given in process; fingerprint of its saved folder {saved}"
    assert provenance["model_fingerprint"] == model_fingerprint(saved)
    unsaved = model_provenance(make_config(EvalConfig, model_id_or_ckpt="tiny", output_dir=str(tmp_path / "e")), None)
    assert unsaved["model_fingerprint"] is None and "not saved" in unsaved["model"]


def test_a_loaded_model_is_described_and_fingerprinted_with_its_adapter(tmp_path: Path) -> None:
    from slakevqa.models.loading import LoadedModel

    base, adapter = model_folder(tmp_path / "base"), tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    loaded = LoadedModel(None, None, "lora", str(base), "float32", "cpu", adapter=str(adapter), merged=True)
    provenance = model_provenance(make_config(EvalConfig, output_dir=str(tmp_path / "e")), loaded)
    assert provenance["model"] == loaded.describe() and f"LoRA adapter {adapter}" in provenance["model"]
    assert provenance["model_fingerprint"] == model_fingerprint(base, adapter)
