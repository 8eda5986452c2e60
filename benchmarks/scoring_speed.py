"""How long scoring 1,061 predictions takes: all scorers, all slices, 95% bootstrap intervals.

    SLAKE_ROOT=../shared/slake/Slake1.0 python benchmarks/scoring_speed.py [--repeats 5]

Pinned to one CPU core (scoring uses no BLAS, so numpy threads do not matter). With SLAKE_ROOT set, the
predictions are the English test split answered by a question-only prior (the
commonest train answer of the same content type and answer type; "yes" for
yes/no questions), so texts and slices are real; otherwise 1,061 synthetic rows.
Target: under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from slakevqa.records import Prediction
from slakevqa.runs.results import build_results, write_predictions, write_results


def english(path: Path) -> list[dict]:
    return [record for record in json.loads(path.read_text()) if record["q_lang"] == "en"]


def prior_predictions(root: Path) -> list[Prediction]:
    """English test questions answered from train answer frequencies (gold never read)."""
    train, test = english(root / "train.json"), english(root / "test.json")
    prior = Counter((r["content_type"], r["answer_type"], r["answer"]) for r in train)
    best = {}
    for (content, kind, answer), _ in prior.most_common():
        best.setdefault((content, kind), answer)
    rows = []
    for r in test:
        guess = best.get((r["content_type"], r["answer_type"]), "yes")
        rows.append(Prediction(
            qid=r["qid"], question=r["question"], answer=r["answer"], answer_type=r["answer_type"],
            prediction=guess, raw_output=guess, route="prior", prompt=r["question"],
            content_type=r["content_type"], modality=r["modality"], location=r["location"],
            base_type=r["base_type"], q_lang=r["q_lang"], img_name=r["img_name"],
            image_path=str(root / "imgs" / r["img_name"]), split="test"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write_run", default=None, help="also write predictions.jsonl + results.json here")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    root = os.environ.get("SLAKE_ROOT")
    if root and Path(root, "test.json").is_file():
        rows, source = prior_predictions(Path(root)), f"real SLAKE English test at {root}"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from scoring_fixtures import synthetic_rows
        rows, source = synthetic_rows(1061), "synthetic rows (SLAKE_ROOT not set)"
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = build_results(rows, provenance={})
        times.append(time.perf_counter() - start)
    cells = sum(len(groups) for fields in results["slices"].values() for values in fields.values()
                for groups in values.values()) + sum(len(groups) for groups in results["metrics"].values())
    print(f"{len(rows)} predictions ({source}); {len(results['metrics'])} scorers; "
          f"{cells} cells x 1000 resamples; one core")
    print(f"build_results: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeats} runs (target < 2 s)")
    if args.write_run:
        write_predictions(Path(args.write_run) / "predictions.jsonl", rows)
        write_results(Path(args.write_run) / "results.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
