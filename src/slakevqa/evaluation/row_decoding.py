"""Greedy decoding and candidate scoring on rows that share image prefixes (:mod:`.shared_prefix`).

The engine runs each batch's images and questions once (the model's own forward, vision
tower included); everything after it runs here, on the model's decoder layers:

1. :func:`~.packed_prefill.encode_packed` runs every question's tail (``\\n question [/INST]``)
   with its image's prefix, packed, and leaves one right-aligned :class:`RowCache` row per
   question, which :meth:`EncodedRows.select` copies with room for the answer;
2. :func:`greedy_tokens` decodes: argmax, ``</s>`` stops a row (it then emits padding,
   as ``generate`` does), keys and values are written in place, and the host checks
   for the end only every few steps. On CUDA the step is captured once as a CUDA graph
   and replayed (no Python or kernel-launch cost per layer); elsewhere it runs eagerly;
3. :func:`candidate_tail_logprobs` scores CLOSED candidates: each (question, spelling)
   pair gets a copy of its question's row (a few dozen columns, never the image prefix).

Answers equal ``model.generate`` and the repeated-prefix scoring on the tiny model in
fp32 (``tests/test_evaluation_paths.py``, ``tests/test_evaluation_rows.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from slakevqa.kernels.shared_prefix import ImageGroups, RowCache, attention_swapped, language_parts, run_rows

STOP_CHECK_EVERY = 8  # decoding steps between host-side "all rows finished?" checks


@dataclass
class EncodedRows:
    """Question rows after their tails ran: where decoding or candidate scoring continues."""

    cache: RowCache
    groups: ImageGroups
    valid: object          # (rows, width) bool: columns holding a real token
    next_position: object  # (rows,) long: the position id of each row's next token
    last_logits: object    # (rows, vocab): predicts the first answer token
    tail_width: int        # columns the tails take; answers start here

    def select(self, rows: list[int], extra_columns: int) -> "EncodedRows":
        """Copies of ``rows`` with room for ``extra_columns`` answer tokens (the image prefixes stay shared)."""
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=self.valid.device)
        width = self.tail_width + extra_columns
        valid = torch.zeros((len(rows), width), dtype=torch.bool, device=index.device)
        valid[:, :self.tail_width] = self.valid[index, :self.tail_width]
        return EncodedRows(self.cache.select(index, width), self.groups.select(rows), valid,
                           self.next_position[index], self.last_logits[index], self.tail_width)


def greedy_tokens(model, cache_keyword: str, rows: EncodedRows, budget: int, stop_ids: list[int], pad_id: int,
                  cuda_graphs: bool = True, row_budgets=None):
    """Greedy answers (rows, budget): token ids, ``pad_id`` after a row's stop token (any of ``stop_ids``: the
    family's end of turn and the tokenizer's EOS, as ``generate`` stops).

    ``row_budgets`` (rows,): a row ends after that many tokens, as if it had said ``</s>``
    (benchmarks use it to decode what a fine-tuned model would; the batch still runs until
    its longest row is done).
    """
    decoder, _ = language_parts(model)
    first = rows.last_logits.argmax(-1)
    state = DecodeState.start(first, rows, budget, pad_id, stop_ids, row_budgets)
    state.record(first)
    if budget == 1:
        return state.out
    step = decoding_step(model, cache_keyword, rows, state, pad_id)
    with attention_swapped(decoder):
        graphed = cuda_graphs and state.token.is_cuda
        replay = capture(step) if graphed else step  # capturing runs the first step for real
        decode_steps(replay, state, 1 if graphed else 0, budget)
    return state.out


def decoding_step(model, cache_keyword: str, rows: EncodedRows, state: "DecodeState", pad_id: int):
    """One greedy step on ``rows`` that reads and writes only ``state``'s and the rows' tensors (so a CUDA
    graph can replay it): every row's next token written at ``state.column``, its prediction recorded."""
    _, head = language_parts(model)

    def step() -> None:
        state.valid.index_fill_(1, state.column, True)
        rows.cache.start = state.column
        hidden = run_rows(model, state.token[:, None], state.position[:, None], rows.cache, rows.groups,
                          state.valid[:, None, :], cache_keyword)
        state.advance(head(hidden[:, -1]).argmax(-1), pad_id)

    return step


def decode_steps(replay, state: "DecodeState", done_steps: int, budget: int) -> None:
    """Run ``replay`` until ``budget`` tokens are out (``done_steps`` already ran), or every row has stopped
    (checked on the host only every few steps: each check waits for the GPU)."""
    for done in range(done_steps, budget - 1):
        replay()
        if done % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and bool(state.done.all()):
            break


@dataclass
class DecodeState:
    """Every tensor one decoding step reads and writes, fixed in place so a CUDA graph can replay the step."""

    token: object     # (rows,) the token to run next
    position: object  # (rows,)
    column: object    # 0-d: the cache column it writes
    step: object      # 0-d: the output column of the token it predicts
    valid: object     # (rows, width)
    done: object      # (rows,) bool
    out: object       # (rows, budget)
    limits: object    # (rows,) tokens each row may emit
    stops: object     # (n,) the ids that end a row

    @staticmethod
    def start(first, rows: EncodedRows, budget: int, pad_id: int, stop_ids: list[int],
              row_budgets=None) -> "DecodeState":
        import torch

        device = first.device
        limits = torch.full_like(first, budget) if row_budgets is None else torch.as_tensor(row_budgets).to(device)
        return DecodeState(first.clone(), rows.next_position.clone(),
                           torch.tensor(rows.tail_width, device=device), torch.tensor(1, device=device),
                           rows.valid.clone(), torch.zeros_like(first, dtype=torch.bool),
                           torch.full((first.shape[0], budget), pad_id, dtype=torch.long, device=device), limits,
                           torch.tensor(stop_ids, dtype=torch.long, device=device))

    def stopped(self, tokens):
        return (tokens[:, None] == self.stops).any(-1)  # no host sync: CUDA graphs capture it

    def record(self, first) -> None:
        self.out[:, 0] = first
        self.done |= self.stopped(first) | (self.limits <= 1)

    def advance(self, predicted, pad_id: int) -> None:
        import torch

        predicted = torch.where(self.done, pad_id, predicted)
        self.out.index_copy_(1, self.step.view(1), predicted[:, None])
        self.done |= self.stopped(predicted) | (self.limits <= self.step + 1)
        self.token.copy_(predicted)
        self.position += 1
        self.column += 1
        self.step += 1


def capture(step):
    """Run ``step`` once for real (the warm-up CUDA graphs need), then capture it; returns the replay.

    Capturing records kernels without running them, so the state ``step`` advances stays where the
    warm-up left it. A step that cannot be captured (a layer that syncs with the host, say a
    quantised one) is replayed eagerly instead, with a warning.
    """
    import logging

    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as error:
        logging.getLogger(__name__).warning("decoding without CUDA graphs: the step could not be captured (%s)",
                                            str(error).splitlines()[0])
        torch.cuda.synchronize()
        return step
    return graph.replay


def candidate_tokens(pairs: list[tuple[int, list[int]]], pad_id: int, device):
    """``(tokens, real)``: each pair's candidate ids right-padded to the longest, and which are real."""
    import torch

    width = max(len(tokens) for _, tokens in pairs)
    tokens = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (_, cand) in enumerate(pairs):  # filled on the host, then one transfer (not one per pair)
        tokens[i, :len(cand)] = torch.tensor(cand)
        real[i, :len(cand)] = True
    return tokens.to(device), real.to(device)


def later_token_logprobs(logits, tokens, real) -> list[float]:
    """Per row, the summed log-probabilities of its real tokens after the first (position j predicts j + 1)."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return (logprobs.gather(-1, tokens[:, 1:, None])[..., 0] * real[:, 1:]).sum(-1).tolist()


def candidate_tail_logprobs(model, cache_keyword: str, rows: EncodedRows, pairs: list[tuple[int, list[int]]],
                            pad_id: int) -> list[float]:
    """Sum of log-probs of each candidate's tokens after the first; ``pairs``: (question row, token ids)."""
    import torch

    if max(len(tokens) for _, tokens in pairs) == 1:
        return [0.0] * len(pairs)
    decoder, head = language_parts(model)
    device = rows.valid.device
    tokens, real = candidate_tokens(pairs, pad_id, device)
    width, tail = tokens.shape[1], rows.tail_width
    owners = torch.tensor([q for q, _ in pairs], device=device)
    cache = rows.cache.select(owners, tail + width)
    cache.start = tail
    valid = torch.cat([rows.valid[owners, :tail], real], dim=1)
    causal = torch.ones((width, tail + width), dtype=torch.bool, device=device).tril(tail)
    positions = rows.next_position[owners, None] + torch.arange(width, device=device)
    with attention_swapped(decoder):
        hidden = run_rows(model, tokens, positions, cache, rows.groups.select([q for q, _ in pairs]),
                          valid[:, None, :] & causal, cache_keyword)
    return later_token_logprobs(head(hidden), tokens, real)
