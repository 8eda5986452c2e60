"""The answering engine: batched OPEN generation and CLOSED candidate scoring.

OPEN questions are generated greedily (stop at ``</s>``), with a longer budget for
abnormality questions, and the answer is extracted from the first non-empty line.
CLOSED questions are answered by likelihood: each candidate is scored by the mean
log-probability of the tokens training would supervise for it (`` {candidate} </s>``),
the best over its spellings (the question's ``left`` and the training answers' ``Left``).

The default path (``share_prefix`` and ``prefix_attention`` on, a Llama-family language model)::

    batch of questions, grouped by image
      --one packed forward (.packed_prefill)-->  each image's prefix once, every question's tail after it
      --split into rows (kernels/shared_prefix.py)-->  one row per question that reads its image's prefix in place
      --.row_decoding-->  CLOSED: candidate tails scored on copies of their question's row
                          OPEN: one greedy decoding call for the batch (CUDA graphs on CUDA),
                                each row stopping at its own budget

Without ``prefix_attention`` (other models, ``--no-prefix_attention``) each image's prefix is
encoded once, repeated into every question's cache, and ``model.generate`` decodes on left-padded
rows with explicit position ids; ``--no-share_prefix`` encodes every question with its own image.
Every path gives the same answers (tests/test_evaluation_paths.py), and a question gets the same
answer whatever batch it is in (``--check_batch_invariance``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slakevqa.errors import UserError
from slakevqa.evaluation.extract import extract_answer, match_candidate
from slakevqa.evaluation.packed_prefill import encode_packed
from slakevqa.evaluation.row_decoding import (
    EncodedRows,
    candidate_tail_logprobs,
    candidate_tokens,
    greedy_tokens,
    later_token_logprobs,
)
from slakevqa.inputs.builder import InputBuilder, SampleView
from slakevqa.inputs.encoding import encode_answer, encode_prompt, image_token_count
from slakevqa.inputs.prompts import IMAGE_TOKEN
from slakevqa.inputs.vocab import candidate_variants
from slakevqa.kernels.attention import AttentionSettings, attention_kernels
from slakevqa.kernels.compat import cache_argument, returned_cache
from slakevqa.kernels.packing import image_groups
from slakevqa.kernels.segment_attention import segments_attended
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
    pixel_values: object


class Engine:
    """Answers batches of samples with one model; ``answer(samples)`` returns Predictions in input order."""

    def __init__(self, model, processor, builder: InputBuilder, *, settings: GenerationSettings = GenerationSettings(),
                 closed_answering: str = "score", share_prefix: bool = True, prefix_attention: bool = True,
                 cuda_graphs: bool = True, attention: AttentionSettings = AttentionSettings()) -> None:
        """``closed_answering``: ``score`` CLOSED candidates by likelihood, or ``generate`` and map onto one.

        ``share_prefix``: prefill each image's prefix once per batch. ``prefix_attention``: then run
        the questions on rows that read that prefix in place (:mod:`.row_decoding`; models of the
        Llama family), else repeat it per question and decode with ``model.generate``.
        ``cuda_graphs``: replay the decoding step as a CUDA graph (CUDA only).
        On rows, a batch's OPEN questions decode in one call whatever their budgets (each row stops
        at its own; ``one_decode_per_batch = False``: one call per budget, as ``generate`` does).
        The prompt length follows ``builder.settings`` (the run's InputSettings); ``attention`` says which
        attention kernels may run (cuDNN's, flash attention's variable-length one).
        """
        self.model, self.processor, self.builder, self.settings = model, processor, builder, settings
        self.attention = attention
        self.closed_answering, self.share_prefix = closed_answering, share_prefix
        self.prefix_attention, self.cuda_graphs = prefix_attention, cuda_graphs
        self.one_decode_per_batch = True
        self.tokenizer = processor.tokenizer
        self.image_tokens = image_token_count(processor)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prepare(self, sample: VQASample) -> Prepared:
        view = self.builder.view(sample)
        ids, _ = encode_prompt(self.tokenizer, view.user_text, self.image_tokens, self.builder.settings.max_prompt_len)
        return Prepared(sample, view, ids, self.pixel_values(sample))

    def pixel_values(self, sample: VQASample):
        return self.builder.pixel_values(sample, self.processor.image_processor)

    def answer(self, samples: list[VQASample]) -> list[Prediction]:
        prepared = [self.prepare(s) for s in samples]
        with attention_kernels(self.attention.cudnn_attention):
            # One encoding of each image's prefix for the whole batch, shared by CLOSED scoring and
            # every budget group of OPEN generation: on rows, one packed forward of images and questions.
            if self.on_rows(prepared):
                return self._answer(prepared, self.encode_batch(prepared))
            shared = self.shared_prefix_length(prepared)
            return self._answer(prepared, self.prefill_images(prepared, shared) if shared else None)

    def _answer(self, prepared: list[Prepared], prefixes) -> list[Prediction]:
        samples = [p.sample for p in prepared]
        results: dict[int, Prediction] = {}
        scored = [p for p in prepared if p.view.route.candidates and self.closed_answering == "score"]
        generated = [p for p in prepared if p not in scored]
        if scored:
            for item, scores in zip(scored, self.score_candidates(scored, prefixes)):
                results[item.sample.qid] = self.closed_prediction(item, scores)
        for group in self.decoding_groups(generated, prefixes):
            budgets = [self.settings.budget(p.sample) for p in group]
            for item, raw in zip(group, self.generate(group, max(budgets), prefixes, budgets)):
                results[item.sample.qid] = self.generated_prediction(item, raw)
        return [results[s.qid] for s in samples]

    def decoding_groups(self, generated: list[Prepared], prefixes) -> list[list[Prepared]]:
        """The OPEN questions' decoding calls: all at once on rows, else one call per token budget.

        A decoding step reads every weight whatever the rows (at 7B and batch 256 it costs about
        the same for 18 rows as for 200), so one 48-step call for a batch's few abnormality rows and
        its 16-token rows beats a 16-step call plus a 48-step call (benchmarks/RESULTS.md, issue 15).
        """
        if self.one_decode_per_batch and isinstance(prefixes, BatchRows) and generated:
            return [generated]
        budgets = sorted({self.settings.budget(p.sample) for p in generated})
        return [[p for p in generated if self.settings.budget(p.sample) == b] for b in budgets]

    # ---------------------------------------------------------------- building predictions

    def prompt_text(self, item: Prepared) -> str:
        from slakevqa.inputs.prompts import render_generation_prompt

        return render_generation_prompt(item.view.user_text)

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

    def left_padded(self, rows: list[list[int]]):
        """``input_ids``, ``attention_mask`` and ``position_ids`` for left-padded rows."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def pixels(self, items: list[Prepared]):
        import torch

        dtype = next(self.model.parameters()).dtype
        return torch.stack([p.pixel_values for p in items]).to(self.device, dtype)

    def generate(self, items: list[Prepared], max_new_tokens: int, prefixes=None,
                 budgets: list[int] | None = None) -> list[str]:
        """Decoded answers; ``prefixes``: the batch's :meth:`encode_batch` or image prefill (:meth:`prefill_images`).

        ``budgets``: each item's own token budget (at most ``max_new_tokens``; rows only: the
        ``generate`` path decodes every item to ``max_new_tokens``, so call it per budget)."""
        import torch

        sampling = {"do_sample": True, "temperature": self.settings.temperature} if self.settings.do_sample \
            else {"do_sample": False}
        if self.on_rows(items):
            with torch.inference_mode():
                encoded, order = self.batch_rows(items, prefixes)
                rows = encoded.select(order, max_new_tokens)
                limits = None if budgets is None or min(budgets) == max_new_tokens else torch.tensor(budgets)
                out = greedy_tokens(self.model, cache_argument(self.model), rows, max_new_tokens,
                                    self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.cuda_graphs,
                                    row_budgets=limits)
            budgets = budgets or [max_new_tokens] * len(items)
            return [self.tokenizer.decode(row[:budget], skip_special_tokens=True).strip()
                    for row, budget in zip(out.tolist(), budgets)]
        if budgets is not None and min(budgets) < max_new_tokens:
            raise ValueError("generate() decodes every item to max_new_tokens: call it once per budget")  # a bug
        with torch.inference_mode():
            shared = self.shared_prefix_length(items)
            if shared:  # the image's prefix is in the cache already; generate continues after it
                cache, ids, mask, _ = self.encode_shared_prefix(items, shared, prefixes)
                inputs = {"input_ids": ids, "attention_mask": mask, cache_argument(self.model): cache}
            else:
                ids, mask, _ = self.left_padded([p.prompt_ids for p in items])
                inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": self.pixels(items)}
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        return [self.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]

    def candidate_ids(self, item: Prepared) -> list[list[list[int]]]:
        """Per candidate, the token ids of each spelling it is scored under (``vocab.candidate_variants``)."""
        return [[encode_answer(self.tokenizer, item.view.user_text, variant)
                 for variant in candidate_variants(candidate, self.builder.vocab)]
                for candidate in item.view.route.candidates]

    def score_candidates(self, items: list[Prepared], prefixes=None) -> list[list[float]]:
        """Best mean token log-probability over each candidate's spellings, prompts encoded once."""
        import torch

        owners = [(q, c) for q, item in enumerate(items) for c, variants in enumerate(self.candidate_ids(item))
                  for _ in variants]
        pairs = [(q, variant) for q, item in enumerate(items) for variants in self.candidate_ids(item)
                 for variant in variants]
        with torch.inference_mode():
            if self.on_rows(items):
                encoded, rows = self.batch_rows(items, prefixes)
                first = encoded.last_logits[rows].float().log_softmax(-1)  # predicts each candidate's first token
                tails = candidate_tail_logprobs(self.model, cache_argument(self.model), encoded,
                                                [(rows[q], tokens) for q, tokens in pairs],
                                                self.tokenizer.pad_token_id)
            else:
                logits, cache, mask, positions = self.encode_prompts(items, prefixes)
                first = logits.float().log_softmax(-1)
                rows = torch.tensor([q for q, _ in pairs], device=self.device)
                cache.reorder_cache(rows)
                tails = self.candidate_tail_logprobs(pairs, rows, mask, positions, cache)
        scores = [[float("-inf")] * len(item.view.route.candidates) for item in items]
        for (q, c), (_, variant), tail in zip(owners, pairs, tails):
            value = (float(first[q, variant[0]]) + tail) / len(variant)
            # max() would drop a NaN against -inf and answer anyway: keep it, closed_prediction refuses it
            scores[q][c] = value if math.isnan(value) or value > scores[q][c] else scores[q][c]
        return scores

    # ---------------------------------------------------------------- one encoding per image

    def shared_prefix_length(self, items: list[Prepared]) -> int:
        """Tokens every prompt of the batch shares up to its last image token (0: do not share).

        LLaVA-Med prompts are ``<s> [INST] <image>×N \n text [/INST]``: the first
        N + 5 tokens are the same for every question, and their keys and values
        depend only on the image. So each image is encoded once per batch, and its
        prefix cache is repeated for every question about it.
        """
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        first = items[0].prompt_ids
        if not self.share_prefix or image_id not in first:
            return 0
        end = len(first) - first[::-1].index(image_id)
        same = all(p.prompt_ids[:end] == first[:end] and len(p.prompt_ids) > end for p in items)
        return end if same else 0

    def prefill_images(self, items: list[Prepared], shared: int) -> tuple[dict[int, int], object]:
        """The prefix cache of each distinct image of ``items`` (one row each) and each image's row."""
        import torch

        unique = list({id(p.pixel_values): p for p in items}.values())
        prefix = torch.tensor([items[0].prompt_ids[:shared]] * len(unique), device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=prefix, pixel_values=self.pixels(unique), use_cache=True, logits_to_keep=1)
        return {id(p.pixel_values): row for row, p in enumerate(unique)}, returned_cache(out)

    def on_rows(self, items: list[Prepared]) -> bool:
        """Whether ``items`` run on rows that read their image's prefix in place (:mod:`.row_decoding`).

        Greedy only: ``--do_sample`` keeps ``generate``'s sampling (and its batch's prefill) for the whole batch.
        """
        return (self.prefix_attention and not self.settings.do_sample and supports_shared_prefix(self.model)
                and self.shared_prefix_length(items) > 0)

    def encode_batch(self, items: list[Prepared]) -> "BatchRows":
        """Every item's prompt run once, packed by image (:mod:`.packed_prefill`): one row per item."""
        import torch

        groups = image_groups([id(p.pixel_values) for p in items])
        with torch.inference_mode(), segments_attended(self.model, self.attention.varlen_attention):
            # no autograd graph: at 7B a batch's activations would fill the card
            rows = encode_packed(self.model, cache_argument(self.model), [p.prompt_ids for p in items], groups,
                                 self.pixels([items[g[0]] for g in groups]), self.shared_prefix_length(items),
                                 self.tokenizer.pad_token_id, self.attention.varlen_attention)
        return BatchRows(rows, {id(p): row for row, p in enumerate(items)})

    def batch_rows(self, items: list[Prepared], prefixes=None) -> tuple[EncodedRows, list[int]]:
        """The batch's encoded rows (:meth:`encode_batch`, afresh if ``prefixes`` lacks an item) and each item's row."""
        if not isinstance(prefixes, BatchRows) or any(id(p) not in prefixes.row_of for p in items):
            prefixes = self.encode_batch(items)
        return prefixes.rows, [prefixes.row_of[id(p)] for p in items]

    def encode_rows(self, items: list[Prepared], extra_columns: int) -> EncodedRows:
        """``items`` encoded, one row each in order, with room for ``extra_columns`` answer tokens."""
        rows, order = self.batch_rows(items)
        return rows.select(order, extra_columns)

    def encode_shared_prefix(self, items: list[Prepared], shared: int, prefixes=None):
        """The image prefixes (each image once) in a cache with one row per item, and the rest of the prompts.

        Returns ``(cache, input_ids, attention_mask, position_ids)`` for the whole
        prompts: ``[prefix][left padding][question]``; the padding sits between the
        prefix and the question, masked out, and positions skip it. The batch's
        prefill ``prefixes`` (:meth:`answer`) is copied when it holds every image of ``items``.
        """
        import copy

        import torch

        if prefixes is None or any(id(p.pixel_values) not in prefixes[0] for p in items):
            prefixes = self.prefill_images(items, shared)
        rows, cache = prefixes[0], copy.deepcopy(prefixes[1])  # reordering below must not touch the batch's copy
        owner = torch.tensor([rows[id(p.pixel_values)] for p in items], device=self.device)
        cache.reorder_cache(owner)
        prefix = torch.tensor([items[0].prompt_ids[:shared]] * len(items), device=self.device)
        tail, tail_mask, _ = self.left_padded([p.prompt_ids[shared:] for p in items])
        mask = torch.cat([torch.ones((len(items), shared), dtype=tail_mask.dtype, device=self.device), tail_mask], 1)
        ids = torch.cat([prefix, tail], dim=1)
        return cache, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def encode_prompts(self, items: list[Prepared], prefixes=None):
        """Run the prompts once: ``(last logits (Q, V), cache, attention_mask, position_ids)``."""
        shared = self.shared_prefix_length(items)
        if shared:
            cache, ids, mask, positions = self.encode_shared_prefix(items, shared, prefixes)
            out = self.model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions[:, shared:],
                             use_cache=True, logits_to_keep=1, **{cache_argument(self.model): cache})
        else:
            ids, mask, positions = self.left_padded([p.prompt_ids for p in items])
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             pixel_values=self.pixels(items), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], returned_cache(out), mask, positions

    def candidate_tail_logprobs(self, pairs: list, rows, mask, positions, cache) -> list[float]:
        """Sum of log-probs of each candidate's tokens after the first, on the repeated prompt cache."""
        import torch

        if max(len(cand) for _, cand in pairs) == 1:
            return [0.0] * len(pairs)
        tokens, real = candidate_tokens(pairs, self.tokenizer.pad_token_id, self.device)
        cand_positions = positions[rows, -1:] + 1 + torch.arange(tokens.shape[1], device=self.device)
        out = self.model(input_ids=tokens, attention_mask=torch.cat([mask[rows], real.to(mask.dtype)], dim=1),
                         position_ids=cand_positions, use_cache=True, **{cache_argument(self.model): cache})
        return later_token_logprobs(out.logits, tokens, real)


@dataclass
class BatchRows:
    """A batch's :class:`EncodedRows` and the row of each of its items (by ``id``)."""

    rows: EncodedRows
    row_of: dict[int, int]
