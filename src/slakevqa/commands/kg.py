"""`slakevqa kg`: the knowledge-graph context a kvqa question's prompt would carry.

    slakevqa kg --slake_root ../shared/slake/Slake1.0 --qid 12000
    slakevqa kg --slake_root ../shared/slake/Slake1.0 --split test --coverage

Every piece of data text printed (question, triple, image labels, KG facts, relation names)
goes through :func:`~slakevqa.escaping.printable`: a KG row or a question holding a terminal
escape sequence or a bidi override prints as visible ``\x1b`` / ``\u202e``, one line per field.
"""

from __future__ import annotations

import argparse
from collections import Counter

from slakevqa.commands.dataset_args import add_dataset_arguments, resolve_dataset_root
from slakevqa.data.annotations import image_labels
from slakevqa.data.kg import format_triple, kg_facts_for, load_kg
from slakevqa.data.slake import SPLITS, find_layout, load_split
from slakevqa.errors import UserError
from slakevqa.escaping import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, split="test")
    parser.add_argument("--qid", type=int, action="append", default=[], help="question id (repeatable)")
    parser.add_argument("--coverage", action="store_true",
                        help="for every kvqa question of --split, count how many get KG facts, by relation")
    parser.add_argument("--max_facts", type=int, default=3, help="facts per question (default: 3)")


def run(args: argparse.Namespace) -> int:
    root = resolve_dataset_root(args)
    layout = find_layout(root)
    if layout.kg_dir is None:
        raise UserError(f"{layout.root}: no KG/ folder, so there is no knowledge graph to read")
    graphs = {}
    if args.coverage:
        samples = [s for s in load_split(root, args.split, args.language, args.missing_images) if s.is_kvqa]
        return print_coverage(samples, graphs, layout.kg_dir, args.max_facts)
    if not args.qid:
        raise UserError("pass --qid N (repeatable) or --coverage")
    wanted = set(args.qid)
    samples = [s for split in SPLITS for s in load_split(root, split, "all", args.missing_images) if s.qid in wanted]
    missing = wanted - {s.qid for s in samples}
    if missing:
        raise UserError(f"{layout.root}: no record with qid {', '.join(map(str, sorted(missing)))}")
    for sample in samples:
        kg = graphs.setdefault(sample.q_lang, load_kg(layout.kg_dir, sample.q_lang))
        print(f"qid {sample.qid} ({sample.split}, {printable(sample.base_type)}): {printable(sample.question)}")
        print(f"  triple: {printable(list(sample.triple))} -> {printable(repr(format_triple(sample.triple)))}")
        print(f"  image labels: {printable(', '.join(image_labels(sample.image_path))) or '(none)'}")
        for fact in kg_facts_for(sample, kg, args.max_facts) or ["(no KG facts)"]:
            print(f"  fact: {printable(fact)}")
    return 0


def print_coverage(samples: list, graphs: dict, kg_dir, max_facts: int) -> int:
    covered, total = Counter(), Counter()
    for sample in samples:
        kg = graphs.setdefault(sample.q_lang, load_kg(kg_dir, sample.q_lang))
        total[sample.triple[1]] += 1
        covered[sample.triple[1]] += bool(kg_facts_for(sample, kg, max_facts))
    print(f"kvqa questions with KG facts: {sum(covered.values())} / {sum(total.values())}")
    for relation, count in total.most_common():
        print(f"  {printable(relation):<14} {covered[relation]:>4} / {count}")
    return 0
