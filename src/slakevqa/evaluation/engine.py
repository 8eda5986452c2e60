"""The answering engine: batched OPEN generation and CLOSED candidate scoring, for every model family.

OPEN questions are generated greedily (stop at the family's end of turn), with a longer budget for
abnormality questions, and the answer is extracted from the first non-empty line. CLOSED questions are
answered by likelihood: each candidate is scored by the mean log-probability of the tokens training
would supervise for it (LLaVA-Med: `` {candidate} </s>``), the best over its spellings (the question's
``left`` and the training answers' ``Left``).

The engine prepares each question (its view, its image's inputs, its prompt ids in the family's chat
format) and builds the predictions; the model runs in one of two backends, each a class of its own:

* :class:`~slakevqa.evaluation.plain_backend.PlainBackend`: left padding, ``generate``, candidate
  likelihoods from one prompt encoding. Every family; the reference.
* :class:`~slakevqa.evaluation.fast_backend.FastBackend`: each image's prefix once per batch, rows that
  read it in place, one packed forward. Families whose ``fast.shared_prefix_eval`` flag is on, with
  ``share_prefix`` and ``prefix_attention`` on (the defaults) and greedy decoding.

Both give the same answers (tests/test_evaluation_paths.py), and a question gets the same answer
whatever batch it is in (``--check_batch_invariance``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from slakevqa.errors import UserError
from slakevqa.evaluation.extract import extract_answer, match_candidate
from slakevqa.evaluation.fast_backend import BatchRows, FastBackend
from slakevqa.evaluation.plain_backend import PlainBackend
from slakevqa.inputs.builder import InputBuilder, SampleView
from slakevqa.inputs.encoding import encode_answers, encode_prompt
from slakevqa.inputs.image_prefetch import ImagePrefetch
from slakevqa.inputs.vocab import candidate_variants
from slakevqa.kernels.attention import AttentionSettings, attention_kernels
from slakevqa.kernels.shared_prefix import supports_shared_prefix
from slakevqa.records import Prediction, VQASample


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens_open_default: int = 16
    max_new_tokens_open_abnormality: int = 48
    temperature: float = 0.0
    do_sample: bool = False

    def budget(self, sample: VQASample) -> int:
        abnormal = sample.content_type.lower() == "abnormality"
        return self.max_new_tokens_open_abnormality if abnormal else self.max_new_tokens_open_default


@dataclass
class Prepared:
    sample: VQASample
    view: SampleView
    prompt_ids: list[int]
    image: object  # slakevqa.models.families.ImageInputs, shared by the questions of one image

    @property
    def pixel_values(self):
        return self.image.pixel_values


class Engine:
    """Answers batches of samples with one model; ``answer(samples)`` returns Predictions in input order."""

    def __init__(self, model, processor, builder: InputBuilder, *, settings: GenerationSettings = GenerationSettings(),
                 closed_answering: str = "score", share_prefix: bool = True, prefix_attention: bool = True,
                 cuda_graphs: bool = True, attention: AttentionSettings = AttentionSettings(), family=None,
                 reuse_decoding: bool = False) -> None:
        """``closed_answering``: ``score`` CLOSED candidates by likelihood, or ``generate`` and map onto one.

        ``share_prefix`` and ``prefix_attention``: the fast backend where the family allows it (both
        off: the plain backend for every batch). ``cuda_graphs``: replay its decoding step as a CUDA
        graph (CUDA only). ``attention``: which attention kernels may run (cuDNN's, flash attention's
        variable-length one). ``family``: the model family (default: the one ``model``'s config declares).
        ``reuse_decoding``: the fast backend's decoding calls share one captured step (:mod:`.decode_workspace`;
        off until the GPU benchmark shows it pays).
        The prompt length follows ``builder.settings`` (the run's InputSettings).
        """
        from slakevqa.models.families import family_of

        self.model, self.processor, self.builder, self.settings = model, processor, builder, settings
        self.family = family or family_of(model)
        self.attention = attention
        self.closed_answering, self.share_prefix = closed_answering, share_prefix
        self.prefix_attention, self.cuda_graphs = prefix_attention, cuda_graphs
        self.tokenizer = processor.tokenizer
        self.one_decode_per_batch = True  # False: one decoding call per budget on rows too, as generate does
        self.plain = PlainBackend(model, self.tokenizer, self.family, settings.do_sample, settings.temperature)
        fast = (share_prefix and prefix_attention and self.family.fast.shared_prefix_eval
                and supports_shared_prefix(model))
        longest = max(settings.max_new_tokens_open_default, settings.max_new_tokens_open_abnormality)
        self.fast = FastBackend(model, self.tokenizer, self.family, cuda_graphs, attention, longest,
                                reuse_decoding) if fast else None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prepare(self, sample: VQASample) -> Prepared:
        view = self.builder.view(sample)
        image = self.builder.image_inputs(sample, self.family, self.processor)
        ids, _ = encode_prompt(self.tokenizer, view.user_text, image.tokens, self.builder.settings.max_prompt_len,
                               chat=self.family.chat)
        return Prepared(sample, view, ids, image)

    def answer_batches(self, samples: list[VQASample], batch_size: int,
                       workers: int = 0) -> Iterator[list[Prediction]]:
        """:meth:`answer` of ``samples`` ``batch_size`` at a time, in order; ``workers`` threads prepare every
        image ahead of the model (:mod:`slakevqa.inputs.image_prefetch`), the first batch's first."""
        with ImagePrefetch(self.builder, self.family, self.processor, workers) as images:
            images.submit(samples)
            for start in range(0, len(samples), batch_size):
                batch = samples[start: start + batch_size]
                images.wait(batch)
                yield self.answer(batch)

    def on_rows(self, items: list[Prepared]) -> bool:
        """Whether ``items`` run on the fast backend (greedy only: sampling keeps ``generate``)."""
        return self.fast is not None and not self.settings.do_sample and self.fast.can_answer(items)

    def answer(self, samples: list[VQASample]) -> list[Prediction]:
        prepared = [self.prepare(s) for s in samples]
        # the fast backend serves prompts of one prefix at a time (Qwen2.5-VL's follows the image size)
        parts = self.fast.partitions(prepared) if self.fast is not None else [prepared]
        results: dict[int, Prediction] = {}
        with attention_kernels(self.attention.cudnn_attention):
            for part in parts:
                # On rows, one prefill of images and questions serves CLOSED scoring and OPEN decoding alike.
                batch = self.fast.encode(part) if self.on_rows(part) else None
                results.update((p.sample.qid, prediction) for p, prediction in zip(part, self._answer(part, batch)))
        return [results[p.sample.qid] for p in prepared]

    def _answer(self, prepared: list[Prepared], batch: BatchRows | None) -> list[Prediction]:
        results: dict[int, Prediction] = {}
        scored = [p for p in prepared if p.view.route.candidates and self.closed_answering == "score"]
        scored_ids = {id(p) for p in scored}  # by identity: comparing Prepared records field by field is O(n^2)
        generated = [p for p in prepared if id(p) not in scored_ids]
        if scored:
            for item, scores in zip(scored, self.score_candidates(scored, batch)):
                results[item.sample.qid] = self.closed_prediction(item, scores)
        for group in self.decoding_groups(generated, batch):
            budgets = [self.settings.budget(p.sample) for p in group]
            for item, raw in zip(group, self.generate(group, max(budgets), batch, budgets)):
                results[item.sample.qid] = self.generated_prediction(item, raw)
        return [results[p.sample.qid] for p in prepared]

    def decoding_groups(self, generated: list[Prepared], batch: BatchRows | None) -> list[list[Prepared]]:
        """The OPEN questions' decoding calls: all at once on rows, else one call per token budget.

        A decoding step reads every weight whatever the rows (at 7B and batch 256 it costs about
        the same for 18 rows as for 200), so one 48-step call for a batch's few abnormality rows and
        its 16-token rows beats a 16-step call plus a 48-step call (benchmarks/RESULTS.md, issue 15).
        """
        if self.one_decode_per_batch and batch is not None and generated:
            return [generated]
        budgets = sorted({self.settings.budget(p.sample) for p in generated})
        return [[p for p in generated if self.settings.budget(p.sample) == b] for b in budgets]

    # ---------------------------------------------------------------- building predictions

    def prompt_text(self, item: Prepared) -> str:
        return self.family.chat.generation_prompt(item.view.user_text)

    def closed_prediction(self, item: Prepared, scores: list[float]) -> Prediction:
        candidates = item.view.route.candidates
        if any(math.isnan(score) for score in scores):  # sorting NaNs would still "pick" one, silently
            raise UserError(f"qid {item.sample.qid}: the model's candidate scores are NaN ({', '.join(candidates)}): "
                            "its logits overflowed or the weights hold NaN; evaluate with --precision bf16 or fp32")
        ranked = sorted(scores, reverse=True)
        best = scores.index(ranked[0])
        margin = ranked[0] - ranked[1] if len(ranked) > 1 else None
        return Prediction.from_sample(item.sample, candidates[best], route=item.view.route.kind,
                                      candidates=tuple(candidates), scores=tuple(scores), margin=margin,
                                      prompt=self.prompt_text(item))

    def generated_prediction(self, item: Prepared, raw: str) -> Prediction:
        extracted = extract_answer(raw)
        route = item.view.route
        if route.candidates:  # --closed_answering generate: map the free answer onto a candidate
            extracted = match_candidate(extracted, route.candidates) or extracted
        return Prediction.from_sample(item.sample, extracted, raw_output=raw, route=route.kind,
                                      candidates=tuple(route.candidates), prompt=self.prompt_text(item))

    # ---------------------------------------------------------------- model calls

    def generate(self, items: list[Prepared], max_new_tokens: int, batch: BatchRows | None = None,
                 budgets: list[int] | None = None) -> list[str]:
        """Decoded answers. ``budgets``: each item's own token budget (at most ``max_new_tokens``; the fast
        backend only: the plain one decodes every item to ``max_new_tokens``, so call it per budget)."""
        if self.on_rows(items):
            return self.fast.generate(items, max_new_tokens, budgets, batch)
        if budgets is not None and min(budgets) < max_new_tokens:
            raise ValueError("the plain backend decodes every item to max_new_tokens: call it once per budget")  # a bug
        return self.plain.generate(items, max_new_tokens)

    def candidate_ids(self, items: list[Prepared]) -> list[list[list[list[int]]]]:
        """Per item and candidate, the token ids of each spelling it is scored under (``vocab.candidate_variants``),
        tokenised in one call for all items."""
        spellings = [[candidate_variants(c, self.builder.vocab) for c in item.view.route.candidates] for item in items]
        flat = encode_answers(self.tokenizer, [(item.view.user_text, [v for variants in per_item for v in variants])
                                               for item, per_item in zip(items, spellings)], chat=self.family.chat)
        regrouped = []
        for per_item, ids in zip(spellings, flat):
            spelled = iter(ids)
            regrouped.append([[next(spelled) for _ in variants] for variants in per_item])
        return regrouped

    def score_candidates(self, items: list[Prepared], batch: BatchRows | None = None) -> list[list[float]]:
        """Best mean token log-probability over each candidate's spellings, prompts encoded once."""
        ids = self.candidate_ids(items)
        owners = [(q, c) for q, per_item in enumerate(ids) for c, variants in enumerate(per_item) for _ in variants]
        pairs = [(q, variant) for q, per_item in enumerate(ids) for variants in per_item for variant in variants]
        backend = self.fast if self.on_rows(items) else self.plain
        first, tails = backend.score(items, pairs, batch) if backend is self.fast else backend.score(items, pairs)
        scores = [[float("-inf")] * len(item.view.route.candidates) for item in items]
        # every first token's log-probability in one transfer (one read per pair waited for the GPU each time)
        firsts = first[[q for q, _ in pairs], [variant[0] for _, variant in pairs]].tolist()
        for (q, c), (_, variant), head, tail in zip(owners, pairs, firsts, tails):
            value = (head + tail) / len(variant)
            # max() would drop a NaN against -inf and answer anyway: keep it, closed_prediction refuses it
            scores[q][c] = value if math.isnan(value) or value > scores[q][c] else scores[q][c]
        return scores
