"""Synthetic predictions for the scoring, results and report tests (no model, no dataset)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from slakevqa.records import Prediction

_OPEN = [("What organ is shown?", "Liver", ["liver", "the liver.", "spleen", "kidney"]),
         ("Where is the lesion?", "Left Lung", ["left lung", "lung", "right lung", "the left lung is affected"]),
         ("How many kidneys?", "2", ["two", "2", "1", "none"]),
         ("What modality?", "X-Ray", ["x-ray", "xray", "ct", "mri"])]
_CLOSED = [("Is this normal?", "No", ["no", "yes"]), ("Is there a nodule?", "Yes", ["yes", "no"]),
           ("Which is bigger, liver or spleen?", "Liver", ["liver", "spleen"])]


def synthetic_rows(n: int, seed: int = 0, image_dir: Path | None = None,
                   accuracy: float = 0.7, model_seed: int = 0) -> list[Prediction]:
    """``n`` predictions with SLAKE-like slices; about ``accuracy`` of them right.

    ``seed`` fixes the questions, ``model_seed`` and ``accuracy`` the answers, so two
    "models" can answer the same questions. With ``image_dir``, writes one small PNG
    per image and points ``image_path`` at it.
    """
    rng, model = random.Random(seed), random.Random(model_seed)
    rows = []
    for qid in range(n):
        closed = rng.random() < 0.4
        question, answer, options = rng.choice(_CLOSED if closed else _OPEN)
        prediction = options[0] if model.random() < accuracy else model.choice(options[1:])
        image = f"xmlab{qid % 7}/source.jpg"
        path = _write_image(image_dir, qid % 7) if image_dir is not None else ""
        candidates = tuple(options) if closed else ()
        # The predicted candidate always scores best, so `choice` agrees with `exact` here.
        scores = tuple(-0.3 * abs(model.gauss(0, 1)) - (0 if c == prediction else 1) for c in candidates)
        margin = (sorted(scores)[-1] - sorted(scores)[-2]) if scores else None
        rows.append(Prediction(
            qid=qid, question=question, answer=answer, answer_type="CLOSED" if closed else "OPEN",
            prediction=prediction, raw_output=f"Answer: {prediction}", route="yesno" if closed else "open",
            candidates=candidates, scores=scores, margin=margin,
            prompt=f"[INST] <image>\n{question} [/INST]", content_type=rng.choice(["Organ", "Position", "Modality"]),
            modality=rng.choice(["CT", "MRI", "X-Ray"]), location=rng.choice(["Abdomen", "Lung", "Brain"]),
            base_type=rng.choice(["vqa", "kvqa"]), q_lang="en", img_name=image, image_path=path, split="test"))
    return rows


def _write_image(image_dir: Path, index: int) -> str:
    path = image_dir / f"xmlab{index}" / "source.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (40 * index % 255, 90, 160)).save(path)
    return str(path)
