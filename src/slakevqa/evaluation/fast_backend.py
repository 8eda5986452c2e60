"""The fast evaluation backend: each image's prefix once per batch, then rows that read it in place.

For families whose :attr:`~slakevqa.models.families.FastPaths.shared_prefix_eval` flag is on (LLaVA-Med,
LLaVA-1.5: Llama-family language models with a fixed image prefix)::

    batch of questions, grouped by image
      --one packed forward (.packed_prefill)-->  each image's prefix once, every question's tail after it
      --split into rows (kernels/shared_prefix.py)-->  one row per question that reads its image's prefix in place
      --.row_decoding-->  CLOSED: candidate tails scored on copies of their question's row
                          OPEN: one greedy decoding call for the batch (CUDA graphs on CUDA),
                                each row stopping at its own budget

It answers as :class:`~slakevqa.evaluation.plain_backend.PlainBackend` does (tests/test_evaluation_paths.py,
tests/test_families_engine.py). Greedy only: sampling runs on the plain backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from slakevqa.evaluation.decode_workspace import ReusedDecoding
from slakevqa.evaluation.packed_prefill import encode_packed
from slakevqa.evaluation.prefix_prefill import encode_by_prefix
from slakevqa.evaluation.row_decoding import EncodedRows, candidate_tail_logprobs, greedy_tokens
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.kernels.compat import cache_argument
from slakevqa.kernels.packing import image_groups, prefix_length
from slakevqa.kernels.segment_attention import segments_attended, sliding_window, varlen_serves
from slakevqa.kernels.shared_prefix import language_parts
from slakevqa.models.families.family import stop_ids, to_device


@dataclass
class BatchRows:
    """A batch's :class:`EncodedRows` and the row of each of its items (by ``id``)."""

    rows: EncodedRows
    row_of: dict[int, int]


class FastBackend:
    """Shared image prefixes and rows; ``encode`` a batch once, then ``score`` and ``generate`` on it."""

    def __init__(self, model, tokenizer, family, cuda_graphs: bool = True,
                 attention: AttentionSettings = AttentionSettings(), longest_answer: int = 64,
                 reuse_decoding: bool = False) -> None:
        """``longest_answer``: the most tokens a row may add after its prompt (decoding budget, candidate
        length), for the sliding-window check of :meth:`can_answer`. ``reuse_decoding``: decoding calls share
        one workspace and its captured step (:mod:`.decode_workspace`) instead of capturing one per call."""
        self.model, self.tokenizer, self.family = model, tokenizer, family
        self.cuda_graphs, self.attention, self.longest_answer = cuda_graphs, attention, longest_answer
        self.window = sliding_window(language_parts(model)[0].config)
        self.flat_packing = True  # the packed prefill's images end to end in one row where the varlen kernel serves
        self.reused = ReusedDecoding(model, cache_argument(model), stop_ids(family, tokenizer), tokenizer.pad_token_id,
                                     cuda_graphs, longest_answer) if reuse_decoding else None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def shared_prefix_length(self, items: list) -> int:
        """Tokens every prompt of the batch shares up to its last image token (0: they share none).

        LLaVA-Med prompts are ``<s> [INST] <image>×N \\n text [/INST]``: the first N + 5 tokens are
        the same for every question, and their keys and values depend only on the image.
        """
        image_id = self.tokenizer.convert_tokens_to_ids(self.family.chat.image_token)
        first = items[0].prompt_ids
        if image_id not in first:
            return 0
        end = len(first) - first[::-1].index(image_id)
        same = all(p.prompt_ids[:end] == first[:end] and len(p.prompt_ids) > end for p in items)
        return end if same else 0

    def can_answer(self, items: list) -> bool:
        """Whether the rows serve ``items``: they share a prefix and every row fits the sliding window."""
        longest = max(len(p.prompt_ids) for p in items) + self.longest_answer
        return self.shared_prefix_length(items) > 0 and (self.window is None or longest <= self.window)

    def partitions(self, items: list) -> list[list]:
        """``items`` split by the prompt tokens up to their last image token, in order of first appearance: each
        part shares one prefix (Qwen2.5-VL's token count follows the image size; other families give one part)."""
        image_id = self.tokenizer.convert_tokens_to_ids(self.family.chat.image_token)
        prefixes = [tuple(p.prompt_ids[:prefix_length(p.prompt_ids, image_id)]) if image_id in p.prompt_ids else ()
                    for p in items]
        return [[items[i] for i in part] for part in image_groups(prefixes)]

    def pixels(self, items: list):
        import torch

        dtype = next(self.model.parameters()).dtype  # joined and cast on the device (family.to_device says why)
        return torch.stack([to_device(p.pixel_values, self.device) for p in items]).to(dtype)

    def encode(self, items: list) -> BatchRows:
        """Every item's prompt run once, packed by image (:mod:`.packed_prefill`): one row per item."""
        import torch

        groups = image_groups([id(p.pixel_values) for p in items])
        prompts, prefix = [p.prompt_ids for p in items], self.shared_prefix_length(items)
        pad, varlen = self.tokenizer.pad_token_id, self.attention.varlen_attention
        with torch.inference_mode():  # no autograd graph: at 7B a batch's activations would fill the card
            if self.family.fast.packed_prefill:
                with segments_attended(self.model, varlen):
                    rows = encode_packed(self.model, cache_argument(self.model), prompts, groups,
                                         self.pixels([items[g[0]] for g in groups]), prefix, pad, varlen,
                                         flat=varlen and self.flat_packing and varlen_serves(self.model))
            else:
                rows = encode_by_prefix(self.model, self.family, cache_argument(self.model), prompts, groups,
                                        [items[g[0]].image for g in groups], prefix, pad, varlen)
        return BatchRows(rows, {id(p): row for row, p in enumerate(items)})

    def rows_of(self, items: list, batch: BatchRows | None) -> tuple[EncodedRows, list[int]]:
        """The batch's rows (encoded afresh when ``batch`` lacks an item) and each item's row."""
        if batch is None or any(id(p) not in batch.row_of for p in items):
            batch = self.encode(items)
        return batch.rows, [batch.row_of[id(p)] for p in items]

    def encode_rows(self, items: list, extra_columns: int) -> EncodedRows:
        """``items`` encoded, one row each in order, with room for ``extra_columns`` answer tokens."""
        rows, order = self.rows_of(items, None)
        return rows.select(order, extra_columns)

    def score(self, items: list, pairs: list[tuple[int, list[int]]], batch: BatchRows | None = None):
        """As :meth:`PlainBackend.score <slakevqa.evaluation.plain_backend.PlainBackend.score>`, on rows."""
        import torch

        with torch.inference_mode():
            encoded, rows = self.rows_of(items, batch)
            first = encoded.last_logits[rows].float().log_softmax(-1)  # predicts each candidate's first token
            tails = candidate_tail_logprobs(self.model, cache_argument(self.model), encoded,
                                            [(rows[q], tokens) for q, tokens in pairs], self.tokenizer.pad_token_id)
        return first, tails

    def generate(self, items: list, max_new_tokens: int, budgets: list[int] | None = None,
                 batch: BatchRows | None = None) -> list[str]:
        """Greedy answers in one decoding call; ``budgets``: each item's own token budget (at most ``max_new_tokens``)."""
        import torch

        with torch.inference_mode():
            encoded, order = self.rows_of(items, batch)
            limits = None if budgets is None or min(budgets) == max_new_tokens else torch.tensor(budgets)
            if self.reused is not None:
                out = self.reused.tokens(encoded, order, max_new_tokens, limits)
            else:
                out = greedy_tokens(self.model, cache_argument(self.model), encoded.select(order, max_new_tokens),
                                    max_new_tokens, stop_ids(self.family, self.tokenizer),
                                    self.tokenizer.pad_token_id, self.cuda_graphs, row_budgets=limits)
        budgets = budgets or [max_new_tokens] * len(items)
        return [self.tokenizer.decode(row[:budget], skip_special_tokens=True).strip()
                for row, budget in zip(out.tolist(), budgets)]
