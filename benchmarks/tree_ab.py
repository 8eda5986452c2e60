"""Two trees of slakevqa, one GPU, the same data and the same random 7B weights: answers, losses and speed.

A change that moves code (issue 24's layout) must change no number. Each tree runs its own benchmark
script (``eval_stages.py`` or ``train_packing.py`` from its ``benchmarks/``, its ``src/`` first on the
path) in a process of its own, one tree after the other; the answers (every question's prediction
and candidate scores) or the step losses are kept and compared, and each tree's speed is printed::

    # bench_data/base/{src,benchmarks}: the earlier tree (git archive or a copy); device, carry ["bench_data"]
    python3 benchmarks/tree_ab.py --trees bench_data/base,. --out $OUT/eval_ab.json eval \\
        -- --slake_root bench_data/Slake1.0 --settings rows --batch_size 256
    python3 benchmarks/tree_ab.py --trees bench_data/base,. --out $OUT/train_ab.json train \\
        -- --slake_root bench_data/Slake1.0 --modes packed+ckpt@64 --steps 10 --warmup 2

    PYTHONPATH=src python benchmarks/tree_ab.py --trees /tmp/base,. eval -- --tiny --slake_root DIR   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs inside the child: the tree's eval_stages.main(), with its run() wrapped to keep the answers.
EVAL_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import eval_stages
keep, original = [], eval_stages.run
def run(engine, samples, batch_size, setting):
    result = original(engine, samples, batch_size, setting)
    keep.append({"setting": setting, "q_per_s": result["q_per_s"], "peak_gib": result["peak_gib"],
                 "answers": {str(p.qid): [p.prediction, list(p.scores)] for p in result["answers"]}})
    return result
eval_stages.run = run
out = sys.argv[2]
sys.argv = ["eval_stages.py", *sys.argv[3:]]
eval_stages.main()
open(out, "w").write(json.dumps(keep))
"""


def child_env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_eval(tree: Path, args: list[str]) -> list[dict]:
    """The tree's eval_stages.py: per setting, its speed and every answer."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "answers.json"
        subprocess.run([sys.executable, "-c", EVAL_CHILD, str(tree), str(out), *args], env=child_env(tree), check=True)
        return json.loads(out.read_text())


def run_train(tree: Path, args: list[str]) -> list[dict]:
    """The tree's train_packing.py: per mode, its speed and every step's loss."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "modes.json"
        subprocess.run([sys.executable, str(tree / "benchmarks" / "train_packing.py"), *args, "--out", str(out)],
                       env=child_env(tree), check=True)
        return json.loads(out.read_text())


def compare_eval(first: list[dict], second: list[dict]) -> list[dict]:
    rows = []
    for a, b in zip(first, second):
        same = sum(a["answers"][q][0] == b["answers"].get(q, [None])[0] for q in a["answers"])
        gaps = [max((abs(x - y) for x, y in zip(a["answers"][q][1], b["answers"][q][1])), default=0.0)
                for q in a["answers"] if q in b["answers"]]
        rows.append({"setting": a["setting"], "answers_identical": f"{same}/{len(a['answers'])}",
                     "max_score_gap": max(gaps, default=0.0), "q_per_s": [a["q_per_s"], b["q_per_s"]],
                     "peak_gib": [a["peak_gib"], b["peak_gib"]]})
    return rows


def compare_train(first: list[dict], second: list[dict]) -> list[dict]:
    rows = []
    for a, b in zip(first, second):
        losses = list(zip(a.get("losses", []), b.get("losses", [])))
        rows.append({"mode": a["mode"], "batch": a.get("batch"), "losses_identical": all(x == y for x, y in losses),
                     "max_loss_gap": max((abs(x - y) for x, y in losses), default=None),
                     "samples_per_s": [a.get("samples_per_s"), b.get("samples_per_s")],
                     "peak_gib": [a.get("peak_gib"), b.get("peak_gib")], "errors": [a.get("error"), b.get("error")]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", required=True, help="two folders, comma-separated, each with src/ and benchmarks/")
    parser.add_argument("--out", default=None, help="write both trees' records and the comparison here")
    parser.add_argument("job", choices=("eval", "train"))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the benchmark script's own arguments")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    runner, compare = (run_eval, compare_eval) if args.job == "eval" else (run_train, compare_train)
    records = [runner(tree, rest) for tree in trees]
    comparison = compare(*records)
    for row in comparison:
        print(json.dumps({"trees": [str(t) for t in trees], **row}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"trees": [str(t) for t in trees], "comparison": comparison,
                                              "records": records}, indent=1))


if __name__ == "__main__":
    main()
