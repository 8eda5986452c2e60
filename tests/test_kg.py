"""Knowledge graph: both file dialects, triple formatting, and image-grounded fact lookup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import default_splits, slake_row, write_mini_slake
from slakevqa.cli import main
from slakevqa.data.kg import format_triple, kg_facts_for, load_kg
from slakevqa.data.slake import load_split
from slakevqa.errors import DataError

EN_ORGAN = "organ#attribute#value\nLung#function#breathe\nLiver#function#detoxicate, store glycogen\n"
EN_ORGAN_REL = "organ#attribute#value\nLung#belong to#Respiratory System\nHeart#belong to#Circulatory System\n"
EN_DISEASE = "disease#attribute#value\nLung Cancer#location#Lung\nLung Cancer#prevention#quit smoking\n"
ZH_ORGAN_REL = "entity,property,value\n肺,属于,呼吸系统\n心脏,属于,循环系统\n"
ZH_DISEASE = "disease,relation,object\n肺癌,发病部位,肺\n肺癌,预防,戒烟，锻炼\n"
ZH_ORGAN = "entity,property,value\n肺,功能,呼吸\n"


def write_kg(root: Path) -> Path:
    kg = root / "KG"
    kg.mkdir(parents=True, exist_ok=True)
    for name, text in {"en_organ.csv": EN_ORGAN, "en_organ_rel.csv": EN_ORGAN_REL, "en_disease.csv": EN_DISEASE,
                       "organ_rel.csv": ZH_ORGAN_REL, "disease.csv": ZH_DISEASE, "organ.csv": ZH_ORGAN}.items():
        (kg / name).write_text(text, encoding="utf-8")
    return kg


def kvqa_dataset(tmp_path: Path) -> Path:
    splits = default_splits()
    splits["test"] = [slake_row(30, 7, base_type="kvqa", content_type="KG", triple=["vhead", "prevent", "ktail"],
                                question="How to prevent the disease in this image?"),
                      slake_row(31, 7, base_type="kvqa", content_type="KG",
                                triple=["vhead", "belong to", "respiratory system"],
                                question="Which organ in the picture belongs to the respiratory system?"),
                      slake_row(32, 7, q_lang="zh", base_type="kvqa", content_type="KG",
                                triple=["vhead", "属于", "呼吸系统"], question="图中哪个器官属于呼吸系统?")]
    root = write_mini_slake(tmp_path / "kv", splits)
    write_kg(root)
    (root / "imgs/xmlab7/detection.json").write_text(json.dumps([{"Lung Cancer": [1.0, 2.0, 3.0, 4.0]}]))
    return root


def test_english_values_with_commas_survive(tmp_path: Path) -> None:
    kg = load_kg(write_kg(tmp_path))
    assert kg.lookup("liver", ("function",))[0].value == "detoxicate, store glycogen"
    assert len(kg.facts) == 6 and {f.source for f in kg.facts} == {"en_organ.csv", "en_organ_rel.csv",
                                                                     "en_disease.csv"}


def test_chinese_files_and_english_aliases(tmp_path: Path) -> None:
    kg = load_kg(write_kg(tmp_path), "zh")
    assert kg.lookup("肺癌", ("预防",))[0].value == "戒烟，锻炼"
    assert kg.lookup("Lung Cancer", ("预防",))[0].entity == "肺癌"  # via the row-aligned en/zh files
    assert kg.lookup("Heart")[0].value == "循环系统"


def test_bad_kg_row_names_file_and_line(tmp_path: Path) -> None:
    kg = write_kg(tmp_path)
    (kg / "en_organ.csv").write_text("organ#attribute#value\nLung#function\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en_organ.csv: line 2: expected 3 '#'-separated fields, found 2"):
        load_kg(kg)


def test_format_triple() -> None:
    assert format_triple(["vhead", "belong to", "respiratory system"]) == "belong to: respiratory system"
    assert format_triple(("vhead", "function", "ktail")) == "function"
    assert format_triple(("vhead", "_", "_")) == ""


def test_facts_come_from_the_image_annotations_not_the_answer(tmp_path: Path) -> None:
    root = kvqa_dataset(tmp_path)
    kg = load_kg(root / "KG")
    prevent, system, zh = load_split(root, "test", "all")
    assert kg_facts_for(prevent, kg) == ["Lung Cancer prevention: quit smoking"]
    # the disease's KG location (Lung) makes the organ visible for organ relations
    assert kg_facts_for(system, kg) == ["Lung belong to: Respiratory System"]
    assert kg_facts_for(zh, load_kg(root / "KG", "zh")) == ["肺 属于: 呼吸系统"]
    assert kg_facts_for(system, kg, labels=["Heart"]) == ["Heart belong to: Circulatory System"]
    vqa = load_split(root, "train")[0]
    assert kg_facts_for(vqa, kg) == []


def test_kg_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = kvqa_dataset(tmp_path)
    assert main(["kg", "--slake_root", str(root), "--qid", "30"]) == 0
    out = capsys.readouterr().out
    assert "triple: ['vhead', 'prevent', 'ktail'] -> 'prevent'" in out and "fact: Lung Cancer prevention" in out
    assert main(["kg", "--slake_root", str(root), "--qid", "999"]) == 2


@pytest.mark.real_data
def test_real_kg_sizes_and_lookups(slake_root: Path) -> None:
    en, zh = load_kg(slake_root / "KG"), load_kg(slake_root / "KG", "zh")
    assert len(en.facts) == 2216 + 281 + 103 and len(zh.facts) == 2216 + 307 + 103
    assert en.lookup("Heart", ("belong to",))[0].value == "Circulatory System"
    test = [s for s in load_split(slake_root, "test") if s.is_kvqa]
    by_qid = {s.qid: kg_facts_for(s, en) for s in test}
    covered = sum(bool(f) for f in by_qid.values())
    assert len(test) == 148 and covered >= 105  # 'damage' (radiation) questions have no KG entity


def test_kg_cli_prints_data_text_without_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A question, triple, image label and KG row holding terminal escapes, a bidi override and newlines
    print as visible escapes, one line per field: nothing recolours the terminal or forges an output line."""
    root = kvqa_dataset(tmp_path)
    hostile = "\x1b[2J\x1b]0;pwned\x07\u202eevil\u202c\x9b31m<script>\nfact: forged"
    shown = "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\u202c\\x9b31m<script>\\nfact: forged"
    control = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    test = json.loads((root / "test.json").read_text())
    test[0].update(question=f"How to prevent it?{hostile}", triple=["vhead", "prevent", f"ktail{hostile}"])
    (root / "test.json").write_text(json.dumps(test))
    (root / "KG/en_disease.csv").write_text(f'disease#attribute#value\nLung Cancer#location#Lung\n'
                                            f'Lung Cancer#prevention#"quit{hostile}"\n', encoding="utf-8")
    (root / "imgs/xmlab7/detection.json").write_text(json.dumps([{"Lung Cancer": [1.0, 2.0, 3.0, 4.0]},
                                                                 {f"Tumour{hostile}": [1.0, 2.0, 3.0, 4.0]}]))
    assert main(["kg", "--slake_root", str(root), "--qid", "30"]) == 0
    out = capsys.readouterr().out
    assert not control.search(out)
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["qid 30 (test, kvqa)", "  triple", "  image labels", "  fact"]
    assert lines[0].endswith(f"How to prevent it?{shown}") and lines[2].endswith(f"Tumour{shown}")
    assert lines[3] == f"  fact: Lung Cancer prevention: quit{shown}"
    test[0]["triple"] = ["vhead", f"prevent{hostile}", "ktail"]  # --coverage prints relation names
    (root / "test.json").write_text(json.dumps(test))
    assert main(["kg", "--slake_root", str(root), "--split", "test", "--coverage"]) == 0
    out = capsys.readouterr().out
    assert not control.search(out) and f"prevent{shown}" in out
