"""Counts that describe a SLAKE split: what `slakevqa stats` prints and TensorBoard logs.

>>> from collections import Counter
>>> split_stats([])["records"]
0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from slakevqa.records import VQASample

COUNTED_FIELDS: tuple[str, ...] = ("answer_type", "modality", "content_type", "base_type", "q_lang")


def split_stats(samples: Sequence[VQASample]) -> dict:
    """Records, distinct images and per-value counts of the categorical fields.

    Returns e.g. ``{"records": 1061, "images": 96, "answer_type": {"OPEN": 645, "CLOSED": 416},
    "modality": {...}, "content_type": {...}, "base_type": {...}, "q_lang": {...}, "kvqa_share": 0.139}``,
    each count dict ordered by decreasing count.
    """
    stats: dict = {"records": len(samples), "images": len({s.image_key for s in samples})}
    for name in COUNTED_FIELDS:
        stats[name] = dict(Counter(getattr(s, name) for s in samples).most_common())
    kvqa = stats["base_type"].get("kvqa", 0)
    stats["kvqa_share"] = round(kvqa / len(samples), 4) if samples else 0.0
    return stats


def format_stats_table(all_stats: dict[str, dict]) -> str:
    """A plain-text table, one column per split, for the terminal."""
    splits = list(all_stats)
    rows: list[tuple[str, list[str]]] = [("records", [str(all_stats[s]["records"]) for s in splits]),
                                         ("images", [str(all_stats[s]["images"]) for s in splits])]
    for name in COUNTED_FIELDS:
        values = list(dict.fromkeys(v for s in splits for v in all_stats[s][name]))
        rows += [(f"{name}={v}", [str(all_stats[s][name].get(v, 0)) for s in splits]) for v in values]
    rows.append(("kvqa share", [f"{all_stats[s]['kvqa_share']:.1%}" for s in splits]))
    width = max(len(label) for label, _ in rows) + 2
    lines = ["".ljust(width) + "".join(s.rjust(12) for s in splits)]
    lines += [label.ljust(width) + "".join(cell.rjust(12) for cell in cells) for label, cells in rows]
    return "\n".join(lines)
