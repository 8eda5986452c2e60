"""How often our scorers agree with each peer's, per question, on answers built from real SLAKE.

    SLAKE_ROOT=../shared/slake/Slake1.0 .venv/bin/python benchmarks/peer_agreement.py

For every English test question, four predictions: the gold answer as is, a reformatted gold
("The <gold>." in lower case), the gold with its first word dropped or a word added, and the
gold answer of another question of the same content type (a plausible wrong answer). 1,061 x 4
= 4,244 (prediction, gold) cases. For each pair of comparable scorers it prints on how many
cases both give the same value, and the mean of each over the cases both define: the numbers
behind docs/metrics.md's comparability table. CPU, seconds; no model.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slakevqa.data.slake import load_split  # noqa: E402
from slakevqa.scoring import score_one  # noqa: E402

# (ours, peer's, the group both are read on)
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("exact", "lmms_eval", "OPEN"), ("exact", "lmms_eval", "CLOSED"),
    ("exact", "reference_exact", "OPEN"), ("exact", "reference_exact", "CLOSED"),
    ("choice", "reference_closed_accuracy", "CLOSED"),
    ("token_f1", "reference_token_f1", "OPEN"), ("token_f1", "multimedeval_f1", "OPEN"),
    ("llava_med", "multimedeval_recall", "OPEN"), ("llava_med", "llava_med_open_hit", "OPEN"),
    ("llava_med", "multimedeval_closed_accuracy", "CLOSED"), ("token_f1", "llava_med_f1", "OPEN"),
)


def cases(root: str, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(prediction, gold, answer_type)`` built from the English test split (module docstring)."""
    rng = random.Random(seed)
    samples = load_split(root, "test", "en")
    by_content: dict[str, list[str]] = {}
    for sample in samples:
        by_content.setdefault(sample.content_type, []).append(sample.answer)
    out = []
    for sample in samples:
        gold, words = sample.answer, sample.answer.split()
        edited = " ".join(words[1:]) if len(words) > 1 else f"{gold} region"
        other = rng.choice([a for a in by_content[sample.content_type] if a != gold] or [gold])
        for prediction in (gold, f"The {gold.lower()}.", edited, other):
            out.append((prediction, gold, sample.answer_type))
    return out


def agreement(rows: list[tuple[str, str, str]], ours: str, peer: str, group: str) -> tuple[int, int, float, float]:
    """(cases both define, cases with equal values, our mean, the peer's mean) on ``group``."""
    both = []
    for prediction, gold, answer_type in rows:
        if answer_type != group:
            continue
        a, b = score_one(ours, prediction, gold, answer_type), score_one(peer, prediction, gold, answer_type)
        if a is not None and b is not None:
            both.append((a, b))
    same = sum(abs(a - b) < 1e-9 for a, b in both)
    n = max(len(both), 1)
    return len(both), same, sum(a for a, _ in both) / n, sum(b for _, b in both) / n


def main() -> None:
    root = os.environ.get("SLAKE_ROOT") or sys.exit("set SLAKE_ROOT to the real SLAKE folder")
    rows = cases(root)
    print(f"{len(rows)} cases from the English test split\n")
    print("| ours | peer | group | cases | same value | ours (mean) | peer (mean) |\n|---|---|---|---:|---:|---:|---:|")
    for ours, peer, group in PAIRS:
        n, same, mean_ours, mean_peer = agreement(rows, ours, peer, group)
        print(f"| {ours} | {peer} | {group} | {n} | {100 * same / max(n, 1):.1f}% | {100 * mean_ours:.1f} | "
              f"{100 * mean_peer:.1f} |")


if __name__ == "__main__":
    main()
