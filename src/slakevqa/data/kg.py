"""SLAKE's knowledge graph (``KG/``) and the facts a kvqa question's prompt can carry.

Six files, each with a header line and rows of exactly three fields:

* English, ``#``-separated (values contain commas)::

      en_organ.csv       organ#attribute#value       Lung#function#breathe
      en_organ_rel.csv   organ#attribute#value       Heart#belong to#Circulatory System
      en_disease.csv     disease#attribute#value     Lung Cancer#location#Lung

* Chinese, ``,``-separated (values use the full-width ``，``): ``organ.csv``,
  ``organ_rel.csv``, ``disease.csv``.

A kvqa record's ``triple`` names the relation it asks about, e.g.
``["vhead", "function", "ktail"]``: ``vhead`` is the entity visible in the image,
``ktail`` the KG value to retrieve. The visible entities come from the image's
annotations (``detection.json``), never from the answer.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from slakevqa.data.annotations import image_labels
from slakevqa.data.reading import read_utf8
from slakevqa.errors import DataError
from slakevqa.records import VQASample

KG_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("en_organ.csv", "#"), ("en_organ_rel.csv", "#"), ("en_disease.csv", "#")),
    "zh": (("organ.csv", ","), ("organ_rel.csv", ","), ("disease.csv", ",")),
}
# Triple fields that stand for "unknown" rather than a value.
PLACEHOLDERS: frozenset[str] = frozenset({"", "_", "vhead", "ktail", "none", "null"})
# SLAKE question relations -> the KG attributes that answer them (both languages).
RELATION_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "belong to": ("belong to",), "part of": ("belong to",),
    "function": ("function", "effect"), "effect": ("effect", "function"), "role": ("effect", "function"),
    "be used for": ("function", "effect"), "can": ("function", "effect"), "could": ("function", "effect"),
    "treat": ("treatment",), "prevent": ("prevention",), "symptom": ("symptom",), "cause": ("cause",),
    "属于": ("属于",), "功能": ("功能", "作用"), "作用": ("作用", "功能"), "可以": ("功能", "作用"),
    "被用于": ("功能", "作用"), "治疗": ("治疗方法",), "预防": ("预防",), "症状": ("主要症状",), "病因": ("病因",),
}
_SIDE_WORDS = ("left ", "right ")


@dataclass(frozen=True)
class KGFact:
    """One row of a KG file."""

    entity: str
    attribute: str
    value: str
    source: str

    def sentence(self) -> str:
        """``Lung function: breathe``: short enough to sit in a prompt."""
        return f"{self.entity} {self.attribute}: {self.value}"


@dataclass
class KnowledgeGraph:
    """Facts indexed by lower-cased entity name."""

    language: str
    facts: list[KGFact]
    aliases: dict[str, str] = field(default_factory=dict)  # other-language name (lower) -> entity
    by_entity: dict[str, list[KGFact]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        index: dict[str, list[KGFact]] = defaultdict(list)
        for fact in self.facts:
            index[fact.entity.lower()].append(fact)
        self.by_entity = dict(index)

    def lookup(self, entity: str, attributes: tuple[str, ...] = ()) -> list[KGFact]:
        """Facts about ``entity`` (case-insensitive), restricted to ``attributes`` when given, in their order."""
        key = entity.lower()
        facts = self.by_entity.get(key) or self.by_entity.get(self.aliases.get(key, "").lower(), [])
        if not attributes:
            return list(facts)
        return [f for a in attributes for f in facts if f.attribute.lower() == a.lower()]


def load_kg(kg_dir: str | Path, language: str = "en") -> KnowledgeGraph:
    """Read the three KG files of one language (``en`` or ``zh``) from ``kg_dir``.

    Missing files are skipped (some copies ship only the English half); a row
    without exactly three fields raises DataError naming the file and line.
    """
    if language not in KG_FILES:
        raise DataError(kg_dir, f"no knowledge graph for language '{language}' (use en or zh)")
    facts: list[KGFact] = []
    for name, separator in KG_FILES[language]:
        path = Path(kg_dir) / name
        if path.is_file():
            facts.extend(read_kg_file(path, separator))
    if not facts:
        expected = ", ".join(name for name, _ in KG_FILES[language])
        raise DataError(kg_dir, f"no knowledge-graph files found (expected {expected})")
    aliases = english_aliases(Path(kg_dir)) if language == "zh" else {}
    return KnowledgeGraph(language=language, facts=facts, aliases=aliases)


def english_aliases(kg_dir: Path) -> dict[str, str]:
    """English entity name (lower) -> Chinese entity name, from row-aligned file pairs.

    Image annotations are English in both languages, so Chinese questions need
    this map. ``disease.csv``/``en_disease.csv`` and ``organ_rel.csv``/``en_organ_rel.csv``
    are line-by-line translations of each other; ``organ.csv`` is not (307 vs 281
    rows) and is not used. A pair whose row counts differ is skipped.
    """
    aliases: dict[str, str] = {}
    for en_name, zh_name in (("en_disease.csv", "disease.csv"), ("en_organ_rel.csv", "organ_rel.csv")):
        if not ((kg_dir / en_name).is_file() and (kg_dir / zh_name).is_file()):
            continue
        english, chinese = read_kg_file(kg_dir / en_name, "#"), read_kg_file(kg_dir / zh_name, ",")
        if len(english) == len(chinese):
            aliases.update({en.entity.lower(): zh.entity for en, zh in zip(english, chinese)})
    return aliases


def read_kg_file(path: Path, separator: str) -> list[KGFact]:
    """The facts of one KG file; bad UTF-8, csv syntax or a row of other than 3 fields names its line."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=separator)
    try:
        rows = list(reader)
    except csv.Error as error:  # e.g. a field over csv's size limit, an unterminated quote
        raise DataError(path, f"not a '{separator}'-separated file ({error})",
                        record=f"line {reader.line_num}") from None
    facts = []
    for line, row in enumerate(rows[1:], start=2):  # line 1 is the header
        if not row:
            continue
        if len(row) != 3:
            raise DataError(path, f"expected 3 '{separator}'-separated fields, found {len(row)}", record=f"line {line}")
        facts.append(KGFact(*(cell.strip() for cell in row), source=path.name))
    return facts


def format_triple(triple: tuple[str, str, str] | list[str]) -> str:
    """A record's ``triple`` as prompt text; placeholders dropped, empty if nothing is left.

    >>> format_triple(("vhead", "belong to", "respiratory system"))
    'belong to: respiratory system'
    >>> format_triple(("vhead", "function", "ktail"))
    'function'
    >>> format_triple(("vhead", "_", "_"))
    ''
    """
    _, relation, tail = (part.strip() for part in triple)
    if relation.lower() in PLACEHOLDERS:
        return ""
    return relation if tail.lower() in PLACEHOLDERS else f"{relation}: {tail}"


def entity_candidates(label: str) -> list[str]:
    """KG entity names an image label may stand for: ``Left Lung`` -> ``Left Lung``, ``Lung``."""
    names = [label]
    lowered = label.lower()
    for side in _SIDE_WORDS:
        if lowered.startswith(side):
            names.append(label[len(side):])
    if lowered.endswith("s") and len(label) > 3:
        names.append(label[:-1])
    return names


def visible_entities(labels: list[str], kg: KnowledgeGraph) -> list[str]:
    """Image labels plus the organs their diseases sit in (``Pneumothorax`` -> ``Lung``).

    Chest X-rays are annotated with findings only, while their kvqa questions ask
    about "the main organ"; the KG's disease ``location`` (``发病部位``) names it.
    """
    organs = [fact.value for label in labels for fact in kg.lookup(label, ("location", "发病部位"))]
    return list(dict.fromkeys([*labels, *(o for organ in organs for o in organ.split(","))]))


def kg_facts_for(sample: VQASample, kg: KnowledgeGraph, max_facts: int = 3,
                 labels: list[str] | None = None) -> list[str]:
    """Fact sentences about the entities annotated in ``sample``'s image, for its triple's relation.

    Returns nothing for ``vqa`` records or relations the KG cannot answer. The
    entities come from ``labels`` or, by default, the image's ``detection.json``.

    Example (xmlab102 is annotated with ``Lung Cancer``)::

        kg_facts_for(sample_with_triple(("vhead", "prevent", "ktail")), kg)
        ['Lung Cancer prevention: quit smoking, correct eating habits, ...']
    """
    if not sample.is_kvqa:
        return []
    attributes = RELATION_ATTRIBUTES.get(sample.triple[1].strip().lower(), ())
    if not attributes:
        return []
    facts: list[str] = []
    for label in visible_entities(labels if labels is not None else image_labels(sample.image_path), kg):
        for name in entity_candidates(label):
            matches = kg.lookup(name, attributes)
            if matches:
                facts.extend(fact.sentence() for fact in matches[:1])
                break
    return list(dict.fromkeys(facts))[:max_facts]
