"""The contracts between stages: one frozen record per SLAKE question.

Every stage (loading, masks, prompts, routing, training, evaluation, scoring)
passes :class:`VQASample` objects; none of them reads raw JSON again.

Example, the first English training record of real SLAKE::

    VQASample(qid=0, img_id=1, img_name="xmlab1/source.jpg",
              question="What modality is used to take this image?", answer="MRI",
              q_lang="en", location="Abdomen", modality="MRI", answer_type="OPEN",
              base_type="vqa", content_type="Modality", triple=("vhead", "_", "_"),
              image_path=Path(".../Slake1.0/imgs/xmlab1/source.jpg"), split="train")
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path

# The 12 keys every record of the official split files carries, in file order.
SLAKE_FIELDS: tuple[str, ...] = (
    "img_id", "img_name", "question", "answer", "q_lang", "location",
    "modality", "answer_type", "base_type", "content_type", "triple", "qid",
)
ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED")
LANGUAGES: tuple[str, ...] = ("en", "zh")


@dataclass(frozen=True, slots=True)
class VQASample:
    """One SLAKE question about one image, with its image resolved on disk.

    ``answer`` is always a string (SLAKE counts are ``"2"``, derived copies may
    hold ints). ``image_path`` is absolute and has been checked to lie inside the
    dataset root. ``split`` is the canonical split name (``train``,
    ``validation`` or ``test``) the record was loaded from.
    """

    qid: int
    img_id: int
    img_name: str
    question: str
    answer: str
    q_lang: str
    location: str
    modality: str
    answer_type: str
    base_type: str
    content_type: str
    triple: tuple[str, str, str]
    image_path: Path
    split: str = "train"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_closed(self) -> bool:
        return self.answer_type == "CLOSED"

    @property
    def is_kvqa(self) -> bool:
        return self.base_type == "kvqa"

    @property
    def image_key(self) -> str:
        """The image folder name (``xmlab12``), shared by all questions on one image."""
        return self.img_name.split("/")[0] if "/" in self.img_name else Path(self.img_name).stem

    def to_json(self) -> dict:
        """The 12 SLAKE fields in their file form (``triple`` as a list)."""
        row = {name: getattr(self, name) for name in SLAKE_FIELDS}
        row["triple"] = list(self.triple)
        return row


# Slice fields copied from the sample onto every prediction, so a predictions file
# can be scored and sliced without the dataset.
SLICE_FIELDS: tuple[str, ...] = (
    "answer_type", "content_type", "modality", "location", "base_type", "q_lang",
)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One model answer to one SLAKE question, with what scoring and reports need.

    ``prediction`` is the answer that is scored: the answer extracted from
    ``raw_output`` for generated answers, the chosen candidate for candidate
    scoring. ``answer`` is the gold answer, copied from the sample *after* the model
    has answered (the model never sees it). ``route`` is a
    :data:`slakevqa.inputs.routing.ROUTE_KINDS` value (``open``, ``yesno``, ``options``,
    ``vocab``). ``scores`` holds one log-probability per entry of ``candidates``;
    ``margin`` is best minus second best. ``image_path`` is a string because it
    round-trips through JSON. Extra keys in a line (``route_source``, ...) are ignored.

    One line of ``predictions.jsonl`` is :meth:`to_json` of one Prediction::

        {"qid": 11934, "question": "Does the picture contain liver?", "answer": "Yes",
         "answer_type": "CLOSED", "prediction": "yes", "raw_output": "",
         "route": "yesno", "candidates": ["yes", "no"], "scores": [-0.21, -1.66],
         "margin": 1.45, "prompt": "[INST] <image>\\nDoes the picture ... [/INST]",
         "content_type": "Organ", "modality": "CT", "location": "Abdomen",
         "base_type": "vqa", "q_lang": "en", "img_name": "xmlab102/source.jpg",
         "image_path": "/data/Slake1.0/imgs/xmlab102/source.jpg", "split": "test"}
    """

    qid: int
    question: str
    answer: str
    answer_type: str
    prediction: str
    raw_output: str = ""
    route: str = ""
    candidates: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    margin: float | None = None
    prompt: str = ""
    content_type: str = ""
    modality: str = ""
    location: str = ""
    base_type: str = ""
    q_lang: str = "en"
    img_name: str = ""
    image_path: str = ""
    split: str = ""

    @property
    def chosen(self) -> str | None:
        """The candidate with the highest score, or None without candidate scores."""
        if not self.candidates or len(self.scores) != len(self.candidates):
            return None
        best = max(range(len(self.scores)), key=self.scores.__getitem__)
        return self.candidates[best]

    @classmethod
    def from_sample(cls, sample: VQASample, prediction: str, **outputs: object) -> "Prediction":
        """Join a sample with what the model produced (``raw_output``, ``route``, ...)."""
        copied = {name: getattr(sample, name) for name in (
            "qid", "question", "answer", "answer_type", *SLICE_FIELDS, "img_name", "split")}
        return cls(prediction=prediction, image_path=str(sample.image_path), **copied, **outputs)

    def to_json(self) -> dict:
        """All fields, tuples as lists (see the class docstring for a line)."""
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        row["candidates"], row["scores"] = list(self.candidates), list(self.scores)
        return row

    @classmethod
    def from_json(cls, row: dict, path: str = "<predictions>", record: str | None = None) -> "Prediction":
        """Read one :meth:`to_json` line back; unknown keys are ignored.

        Raises :class:`~slakevqa.errors.DataError` naming ``path``, ``record`` and the field.
        """
        from slakevqa.errors import DataError

        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in row:
                if spec.default is MISSING:
                    raise DataError(path, "required field is missing", record, name)
                continue
            try:
                values[name] = _coerce(name, row[name])
            except (TypeError, ValueError) as error:
                raise DataError(path, f"bad value {row[name]!r}: {error}", record, name) from None
        if values["answer_type"] not in ANSWER_TYPES:
            raise DataError(path, f"must be one of {ANSWER_TYPES}, got {values['answer_type']!r}",
                            record, "answer_type")
        if len(values.get("scores", ())) not in (0, len(values.get("candidates", ()))):
            raise DataError(path, "needs one score per candidate", record, "scores")
        return cls(**values)


def _coerce(name: str, value: object) -> object:
    """Check one Prediction field's JSON value; answers may be numbers in derived copies."""
    if name == "qid":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if name == "candidates":
        return tuple(str(item) for item in _as_list(value))
    if name == "scores":
        return tuple(float(item) for item in _as_list(value))
    if name == "margin":
        return None if value is None else float(value)
    if isinstance(value, (dict, list)) or value is None:
        raise TypeError("expected a string")
    return str(value)


def _as_list(value: object) -> list:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value
