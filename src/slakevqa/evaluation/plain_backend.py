"""The plain evaluation backend: what any model family can run, and the reference every fast path equals.

Nothing clever, so it reads on its own::

    prompts (each with its own image)  --left-padded, family's image inputs-->
      OPEN:   model.generate(...)                        greedy (or sampled), stops at the family's stop token
      CLOSED: one forward of the prompts (KV cache)      the first token of every candidate from its last logits
              the cache's rows repeated per candidate    the candidates' later tokens in one more forward

Positions come from the family (``family.position_ids`` for the prompts, ``family.next_positions`` after
them): 1-D for LLaVA and Gemma 3, 3-D M-RoPE for Qwen2.5-VL. Each image is encoded once per question.
"""

from __future__ import annotations

from slakevqa.evaluation.row_decoding import candidate_tokens, later_token_logprobs
from slakevqa.kernels.compat import cache_argument, returned_cache
from slakevqa.models.families.family import prompt_batch, stop_ids


class PlainBackend:
    """Answers on left-padded prompts with transformers' own ``generate`` and one prompt encoding for CLOSED."""

    def __init__(self, model, tokenizer, family, do_sample: bool = False, temperature: float = 0.0) -> None:
        self.model, self.tokenizer, self.family = model, tokenizer, family
        self.sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}

    @property
    def device(self):
        return next(self.model.parameters()).device

    def inputs(self, items: list) -> dict:
        """Left-padded prompts with the family's image inputs and per-token extras, on the model's device."""
        return prompt_batch(self.family, [p.prompt_ids for p in items], [p.image for p in items],
                            self.tokenizer.pad_token_id, self.model)

    def generate(self, items: list, max_new_tokens: int) -> list[str]:
        """Each item's decoded answer, every item decoded up to ``max_new_tokens``."""
        import torch

        inputs = self.inputs(items)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=stop_ids(self.family, self.tokenizer),
                                      pad_token_id=self.tokenizer.pad_token_id, **self.sampling)
        width = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]

    def score(self, items: list, pairs: list[tuple[int, list[int]]]):
        """``(first, tails)``: log-probabilities of every next token after each prompt ``(Q, V)``, and for each
        ``(item index, candidate ids)`` pair the summed log-probability of its tokens after the first."""
        import torch

        inputs = self.inputs(items)
        with torch.inference_mode():
            positions = self.family.position_ids(self.model, inputs["input_ids"], inputs["attention_mask"], inputs)
            out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            first = out.logits[:, -1].float().log_softmax(-1)
            if max(len(tokens) for _, tokens in pairs) == 1:
                return first, [0.0] * len(pairs)
            rows = torch.tensor([q for q, _ in pairs], device=self.device)
            cache = returned_cache(out)
            cache.reorder_cache(rows)
            tokens, real = candidate_tokens(pairs, self.tokenizer.pad_token_id, self.device)
            after = self.family.next_positions(positions, tokens.shape[1]).index_select(-2, rows)
            mask = torch.cat([inputs["attention_mask"][rows], real.to(inputs["attention_mask"].dtype)], dim=1)
            out = self.model(input_ids=tokens, attention_mask=mask, position_ids=after, use_cache=True,
                             **self.family.images.text_inputs(tokens), **{cache_argument(self.model): cache})
        return first, later_token_logprobs(out.logits, tokens, real)
