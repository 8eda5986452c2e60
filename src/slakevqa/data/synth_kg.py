"""The knowledge graph of the synthetic SLAKE: a few facts per synthetic organ, in SLAKE's six files.

The kvqa questions ask for a fact about *the organ on one side of the image*, so
the answer needs the picture (which organ) and the KG (its fact). Facts are
fixed, not seeded: the KG is the same for every synthetic dataset.

The file formats copy real SLAKE's ``KG/``: English files are ``#``-separated
(their values contain commas), Chinese files are ``,``-separated with full-width
``，`` inside values, every file opens with its header and has no final newline::

    en_organ.csv      organ#attribute#value        Liver#function#make bile, store energy, clear toxins
    en_organ_rel.csv  organ#attribute#value        Liver#belong to#Digestive System
    en_disease.csv    disease#attribute#value      Hepatitis#location#Liver
    organ.csv         entity,property,value        肝脏,功能,生成胆汁，储存能量，清除毒素
    organ_rel.csv     entity,property,value        肝脏,属于,消化系统
    disease.csv       disease,relation,object      肝炎,发病部位,肝脏
"""

from __future__ import annotations

from dataclasses import dataclass

from slakevqa.data.synth_scene import ORGAN_BY_NAME


@dataclass(frozen=True)
class OrganFacts:
    """The KG facts of one organ, in English and Chinese."""

    function: str
    function_zh: str
    system: str
    system_zh: str
    position: str
    position_zh: str


# Our wording. Functions are distinct per organ so each kvqa answer names one organ.
ORGAN_FACTS: dict[str, OrganFacts] = {
    "Liver": OrganFacts("make bile, store energy, clear toxins", "生成胆汁，储存能量，清除毒素",
                        "Digestive System", "消化系统",
                        "upper right abdomen, under the diaphragm", "右上腹，膈肌下方"),
    "Heart": OrganFacts("pump blood through the body", "泵送血液流遍全身",
                        "Circulatory System", "循环系统",
                        "middle of the chest, between the lungs", "胸腔中部，两肺之间"),
    "Spleen": OrganFacts("filter blood, support immunity", "过滤血液，支持免疫",
                         "Lymphatic System", "淋巴系统",
                         "upper left abdomen, behind the stomach", "左上腹，胃的后方"),
    "Stomach": OrganFacts("store and break down food", "储存并分解食物",
                          "Digestive System", "消化系统",
                          "upper abdomen, below the esophagus", "上腹部，食管下方"),
    "Colon": OrganFacts("absorb water, form stool", "吸收水分，形成粪便",
                        "Digestive System", "消化系统",
                        "around the abdomen, after the small bowel", "环绕腹部，位于小肠之后"),
}

# disease -> (Chinese name, organ, symptom, symptom zh, treatment, treatment zh)
DISEASES: dict[str, tuple[str, str, str, str, str, str]] = {
    "Hepatitis": ("肝炎", "Liver", "fatigue, jaundice", "乏力，黄疸",
                  "antiviral drugs, rest", "抗病毒药物，休息"),
    "Myocarditis": ("心肌炎", "Heart", "chest pain, palpitations", "胸痛，心悸",
                    "rest, heart medication", "休息，心脏药物"),
    "Splenomegaly": ("脾肿大", "Spleen", "left upper abdominal fullness", "左上腹胀满",
                     "treat the underlying cause", "治疗原发病"),
    "Gastritis": ("胃炎", "Stomach", "stomach pain, nausea", "胃痛，恶心",
                  "acid suppressants", "抑酸药物"),
    "Colitis": ("结肠炎", "Colon", "diarrhea, abdominal pain", "腹泻，腹痛",
                "anti-inflammatory drugs", "抗炎药物"),
}


def _zh(organ: str) -> str:
    return ORGAN_BY_NAME[organ].zh


def organ_rows() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``(en_organ rows, organ rows)``: function and position of every organ."""
    en, zh = [], []
    for name, facts in ORGAN_FACTS.items():
        en += [(name, "function", facts.function), (name, "position", facts.position)]
        zh += [(_zh(name), "功能", facts.function_zh), (_zh(name), "位置", facts.position_zh)]
    return en, zh


def relation_rows() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``(en_organ_rel rows, organ_rel rows)``: the body system each organ belongs to."""
    en = [(name, "belong to", facts.system) for name, facts in ORGAN_FACTS.items()]
    zh = [(_zh(name), "属于", facts.system_zh) for name, facts in ORGAN_FACTS.items()]
    return en, zh


def disease_rows() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``(en_disease rows, disease rows)``: location, symptom and treatment of one disease per organ."""
    en, zh = [], []
    for name, (name_zh, organ, symptom, symptom_zh, treatment, treatment_zh) in DISEASES.items():
        en += [(name, "location", organ), (name, "symptom", symptom), (name, "treatment", treatment)]
        zh += [(name_zh, "发病部位", _zh(organ)), (name_zh, "主要症状", symptom_zh),
               (name_zh, "治疗方法", treatment_zh)]
    return en, zh


def _table(header: tuple[str, str, str], rows: list[tuple[str, str, str]], sep: str) -> str:
    # The separator must never occur inside a field, or a reader splits a row into 4.
    for row in rows:
        if any(sep in field for field in row):
            raise ValueError(f"KG field contains the separator {sep!r}: {row}")
    # Like the release: LF line ends, no newline after the last row.
    return "\n".join(sep.join(row) for row in [header, *rows])


def kg_files() -> dict[str, str]:
    """The six KG files as ``{file name: text}``, in a fixed order.

    >>> files = kg_files()
    >>> sorted(files)
    ['disease.csv', 'en_disease.csv', 'en_organ.csv', 'en_organ_rel.csv', 'organ.csv', 'organ_rel.csv']
    >>> files["en_organ_rel.csv"].splitlines()[:2]
    ['organ#attribute#value', 'Liver#belong to#Digestive System']
    """
    organ_en, organ_zh = organ_rows()
    rel_en, rel_zh = relation_rows()
    disease_en, disease_zh = disease_rows()
    return {
        "en_disease.csv": _table(("disease", "attribute", "value"), disease_en, "#"),
        "en_organ.csv": _table(("organ", "attribute", "value"), organ_en, "#"),
        "en_organ_rel.csv": _table(("organ", "attribute", "value"), rel_en, "#"),
        "disease.csv": _table(("disease", "relation", "object"), disease_zh, ","),
        "organ.csv": _table(("entity", "property", "value"), organ_zh, ","),
        "organ_rel.csv": _table(("entity", "property", "value"), rel_zh, ","),
    }
