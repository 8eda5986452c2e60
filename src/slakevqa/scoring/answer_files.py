"""Other tools' SLAKE answer files, joined with SLAKE's gold answers by question id.

``slakevqa score`` reads, besides our ``predictions.jsonl``:

========== =========================================================== ==========================
format     file                                                        question id
========== =========================================================== ==========================
llava_med  LLaVA-Med's ``model_vqa*.py`` answers (jsonl)                ``question_id``
lmms_eval  lmms-eval's ``--log_samples`` file of its SLAKE task         see ``peers.lmms_eval``
reference  the reference toolkit's ``preds.jsonl``                      see ``peers.reference``
========== =========================================================== ==========================

Each answer becomes a :class:`~slakevqa.records.Prediction` of the SLAKE question it
names, so every scorer and every peer headline reads it as it reads our own runs.
Nothing is dropped silently: a repeated or unknown question id stops with one line;
answers to questions of another language and questions left unanswered are counted,
said, and recorded in results.json (``answer_file``), and so is what a format cannot carry
(``caveat``: the reference toolkit's CLOSED rows hold normalised text only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from slakevqa.errors import UserError
from slakevqa.records import Prediction, VQASample

FORMATS: tuple[str, ...] = ("slakevqa", "llava_med", "lmms_eval", "reference")


@dataclass(frozen=True)
class JoinReport:
    """How an answer file met the split: what was scored and what was not, with counts."""

    file: str
    format: str
    answers: int  # lines read
    scored: int
    other_language: int  # answers to questions outside --language, not scored
    unanswered: int  # questions of the split and language with no answer
    unanswered_qids: tuple[int, ...]  # the first few
    caveat: str = ""  # what scores from this format can only approximate (:func:`format_caveat`)

    def as_dict(self) -> dict:
        return {**asdict(self), "unanswered_qids": list(self.unanswered_qids)}

    def lines(self) -> list[str]:
        """What ``slakevqa score`` says about the join, one line per fact worth saying."""
        said = [f"{self.answers} answers in {self.file} ({self.format} format); {self.scored} scored"]
        if self.other_language:
            said.append(f"{self.other_language} answers to questions of another language not scored "
                        "(--language all scores them)")
        if self.unanswered:
            said.append(f"{self.unanswered} questions of the split have no answer in the file and are not scored "
                        f"(qids {', '.join(map(str, self.unanswered_qids))}{', ...' if self.unanswered > 5 else ''})")
        if self.caveat:
            said.append(f"note: {self.caveat}")
        return said


def readers() -> dict[str, Callable[[Path], list[tuple[int, str]]]]:
    """format -> reader of ``(question id, answer text)`` pairs (peer modules imported on use)."""
    from slakevqa.scoring.peers import llava_med_v1, lmms_eval, reference

    return {"llava_med": llava_med_v1.read_answers, "lmms_eval": lmms_eval.read_log_samples,
            "reference": reference.read_preds}


def format_caveat(fmt: str) -> str:
    """One sentence on what scores from a ``fmt`` answer file can only approximate; empty when nothing.

    >>> format_caveat("llava_med")
    ''
    """
    if fmt == "reference":
        from slakevqa.scoring.peers.reference import CLOSED_TEXT_CAVEAT

        return CLOSED_TEXT_CAVEAT
    return ""


def detect_format(path: Path) -> str:
    """The format of an answer file, from the keys of its first record.

    >>> detect_format(Path("answers.jsonl"))  # doctest: +SKIP
    'llava_med'
    """
    first = first_record(path)
    keys = set(first) if isinstance(first, dict) else set()
    if {"qid", "prediction", "answer_type"} <= keys:
        return "slakevqa"
    if {"question_id", "text"} <= keys:
        return "llava_med"
    if "doc_id" in keys and ("resps" in keys or "filtered_resps" in keys):
        return "lmms_eval"
    if {"qid", "normalized_pred", "answer_type"} <= keys:
        return "reference"
    raise UserError(f"{path}: cannot tell its format from the first record's keys {sorted(keys)[:8]}; "
                    f"pass --format ({', '.join(FORMATS)})")


def first_record(path: Path) -> object:
    """The first JSON record of a jsonl file, or the first element of a JSON array file."""
    if not path.is_file():
        raise UserError(f"{path}: no such answer file")
    # utf-8-sig: a byte-order mark (Windows editors, spreadsheet exports) is not part of the first record
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    text = path.read_text(encoding="utf-8-sig", errors="replace")
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as error:
                        raise UserError(f"{path}: line {number} is not JSON ({error.msg})") from None
                return record[0] if isinstance(record, list) and record else record
    raise UserError(f"{path}: the file is empty")


def join_answers(pairs: list[tuple[int, str]], samples: list[VQASample], language: str, path: Path,
                 fmt: str, split: str | None = None) -> tuple[list[Prediction], JoinReport]:
    """Predictions for the answered questions of ``samples`` (a whole split, all languages).

    ``language`` (``en``, ``zh`` or ``all``) picks the questions scored; ``split`` names the
    split in messages (default: the samples' own). Raises UserError on a question id answered
    twice, on one not in the split at all, and when no answer is left to score.
    """
    by_qid = {sample.qid: sample for sample in samples}
    seen: dict[int, int] = {}
    for qid, _ in pairs:
        seen[qid] = seen.get(qid, 0) + 1
    repeated = sorted(q for q, n in seen.items() if n > 1)
    if repeated:
        raise UserError(f"{path}: {len(repeated)} question ids are answered more than once (e.g. {repeated[:5]}); "
                        "keep one answer per question")
    unknown = sorted(q for q in seen if q not in by_qid)
    wanted = [s for s in samples if language == "all" or s.q_lang == language]
    wanted_qids = {s.qid for s in wanted}
    rows = [Prediction.from_sample(by_qid[qid], text, raw_output=text) for qid, text in pairs if qid in wanted_qids]
    if not rows:  # exit 0 with empty tables would read as a score
        raise UserError(nothing_matched(path, len(pairs), len(unknown), split or split_of(samples), language))
    if unknown:
        raise UserError(f"{path}: {len(unknown)} answers name question ids that are not in the split "
                        f"(e.g. {unknown[:5]}); pass the split they answer with --split")
    missing = sorted(wanted_qids - set(seen))
    report = JoinReport(str(path), fmt, len(pairs), len(rows), len(pairs) - len(rows), len(missing),
                        tuple(missing[:5]), format_caveat(fmt))
    return sorted(rows, key=lambda row: row.qid), report


def split_of(samples: list[VQASample]) -> str:
    """The split the samples were loaded from (``test``); ``given`` for an empty list."""
    return samples[0].split if samples else "given"


def nothing_matched(path: Path, answers: int, unknown: int, split: str, language: str) -> str:
    """The one line for an answer file of which no answer can be scored, with why, counted.

    >>> nothing_matched(Path("answers.jsonl"), 5, 5, "test", "en")
    'answers.jsonl: none of its 5 answers matches an English question of the test split (5 unknown ids); \
check --split and --language'
    """
    kind = {"en": "an English question", "zh": "a Chinese question"}.get(language, "a question")
    other = {"en": "to Chinese questions", "zh": "to English questions"}.get(language, "to other questions")
    why = [f"{unknown} unknown ids"] if unknown else []
    why += [f"{answers - unknown} {other}"] if answers - unknown else []
    counted = f" ({', '.join(why)})" if why else ""
    return (f"{path}: none of its {answers} answers matches {kind} of the {split} split{counted}; "
            "check --split and --language")
