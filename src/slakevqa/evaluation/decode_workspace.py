"""One decoding graph for a whole evaluation: the step's tensors live in buffers that outlast a decoding call.

A CUDA graph replays its kernels on the memory it was captured with, so
:func:`~.row_decoding.greedy_tokens` captures its step afresh in every decoding call: an eager
warm-up step and the capture, ~0.18 s at 7B, once per batch (benchmarks/RESULTS.md, issue 15).
Here the step runs on a workspace sized to capacities that only grow, and each call copies its
rows into it::

    workspace rows   [the call's rows ..........][padding rows: stopped from the start]
    row columns      [unused | tails, right-aligned | answer columns ...]
    prefixes         [the batch's images' prefixes ..][unused image slots]

so every later call whose rows fit replays the graph the first one captured (the English test
split at batch 256: two captures for its five calls). Padding rows fill free slots of the
images, read those prefixes and emit padding; nothing of theirs is returned. A call with another
prefix length builds the workspace anew (the length shapes the attention: Qwen2.5-VL's follows
the image size). Answers equal a fresh :func:`~.row_decoding.greedy_tokens` call's
(tests/test_decode_workspace.py).

Example::

    >>> decoding = ReusedDecoding(model, "past_key_values", stop_ids=[2], pad_id=0)
    >>> tokens = decoding.tokens(encoded, rows=[3, 0, 7], budget=16)   # (3, 16), as greedy_tokens gives
    >>> decoding.builds, decoding.calls
    (1, 1)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields, replace

from slakevqa.evaluation.row_decoding import DecodeState, EncodedRows, capture, decode_steps, decoding_step
from slakevqa.kernels.shared_prefix import ImageGroups, RowCache, attention_swapped, language_parts, per_image

ROW_STEP = 32   # rows are rounded up to this, one step more when built: padding rows cost compute in every step
TAIL_STEP = 16  # tail columns are rounded up to this
HEADROOM = 1.5  # a workspace is built with this much more images, rows per image and tail columns than asked


@dataclass(frozen=True)
class Capacity:
    """What a workspace holds: rows, images, rows per image, tail and answer columns; the prefix length exactly.

    >>> Capacity(128, 16, 8, 48, 16, 581).covers(Capacity(64, 9, 8, 32, 16, 581))
    True
    """

    rows: int
    images: int
    members: int
    tail: int
    answer: int
    prefix: int

    @staticmethod
    def needed(image_of_row: list[int], images: int, tail: int, answer: int, prefix: int) -> "Capacity":
        """What a call of rows (``image_of_row``: each one's image) over ``images`` prefixes needs, rounded up."""
        rows = math.ceil(len(image_of_row) / ROW_STEP) * ROW_STEP
        return Capacity(rows, images, max(Counter(image_of_row).values()), math.ceil(tail / TAIL_STEP) * TAIL_STEP,
                        answer, prefix)

    def with_padding_room(self) -> "Capacity":
        """Enough rows per image that the image slots hold every row, padding included."""
        return replace(self, members=max(self.members, math.ceil(self.rows / self.images)))

    def covers(self, need: "Capacity") -> bool:
        return need.prefix == self.prefix and all(getattr(need, f.name) <= getattr(self, f.name) for f in fields(self))

    def grown(self, need: "Capacity") -> "Capacity":
        """Room for what this held and for ``need`` with headroom, so that the next batches fit too: one step
        more rows (padding rows cost compute in every step), half as much again of images, rows per image and
        tail columns (memory only)."""
        roomy = replace(need, rows=need.rows + ROW_STEP, images=math.ceil(need.images * HEADROOM),
                        members=math.ceil(need.members * HEADROOM),
                        tail=math.ceil(need.tail * HEADROOM / TAIL_STEP) * TAIL_STEP)
        return Capacity(*(max(getattr(self, f.name), getattr(roomy, f.name)) for f in fields(self)))


def padded_images(image_of_row: list[int], capacity: Capacity) -> list[int]:
    """Each workspace row's image: the call's rows as they are, then padding rows in the first free slots.

    >>> padded_images([0, 0, 1], Capacity(rows=6, images=3, members=2, tail=16, answer=8, prefix=5))
    [0, 0, 1, 1, 2, 2]
    """
    taken = Counter(image_of_row)
    images = list(image_of_row)
    image = 0
    while len(images) < capacity.rows:
        while taken[image] >= capacity.members:
            image += 1
        images.append(image)
        taken[image] += 1
    return images


class DecodeWorkspace:
    """The buffers one captured decoding step reads and writes, sized to ``capacity``."""

    def __init__(self, model, cache_keyword: str, capacity: Capacity, like: EncodedRows, stop_ids: list[int],
                 pad_id: int, cuda_graphs: bool) -> None:
        import torch

        self.capacity, self.pad_id = capacity, pad_id
        device, c = like.valid.device, capacity
        prefix_keys, row_keys = like.groups.keys, like.cache.keys
        kv, dim = prefix_keys[0].shape[1], prefix_keys[0].shape[3]
        # each layer's prefixes back to back, flash attention's layout; the grouped matmuls read views of them
        packed = {layer: tuple(torch.zeros((c.images * c.prefix, kv, dim), dtype=k.dtype, device=device)
                               for _ in range(2)) for layer, k in enumerate(prefix_keys)}
        views = [[per_image(t, c.images, c.prefix) for t in packed[layer]] for layer in packed]
        groups = ImageGroups.build(padded_images([], c), [k for k, _ in views], [v for _, v in views], device,
                                   like.groups.varlen, packed, c.members)
        width = c.tail + c.answer
        cache = RowCache(*([torch.zeros((c.rows, kv, width, dim), dtype=k.dtype, device=device) for k in row_keys]
                           for _ in range(2)))
        valid = torch.zeros((c.rows, width), dtype=torch.bool, device=device)
        position = torch.zeros(c.rows, dtype=torch.long, device=device)
        self.rows = EncodedRows(cache, groups, valid, position, None, c.tail)
        self.state = DecodeState.start(torch.full((c.rows,), pad_id, device=device), self.rows, c.answer, pad_id,
                                       stop_ids)
        self.step = decoding_step(model, cache_keyword, self.rows, self.state, pad_id)
        self.graphed = cuda_graphs and device.type == "cuda"
        self.replay = None  # captured on the first call (capturing runs a step, so it needs real rows)

    def load(self, encoded: EncodedRows, rows: list[int], images: list[int], budget: int, row_budgets=None) -> None:
        """Copy ``encoded``'s ``rows`` (``images``: each one's image) into the workspace, their first tokens out,
        ready for the next step."""
        import torch

        c, n, tail = self.capacity, len(rows), encoded.tail_width
        index = torch.tensor(rows, dtype=torch.long, device=encoded.valid.device)
        fresh = ImageGroups.build(padded_images(images, c), self.rows.groups.keys, self.rows.groups.values,
                                  index.device, member_slots=c.members)
        groups = self.rows.groups
        for name in ("slot", "flat", "order", "inverse", "members"):
            getattr(groups, name).copy_(getattr(fresh, name))
        groups.image_of_row = fresh.image_of_row
        for static, source in zip(groups.keys + groups.values, encoded.groups.keys + encoded.groups.values):
            static[:source.shape[0]].copy_(source)
        for static, source in zip(self.rows.cache.keys + self.rows.cache.values,
                                  encoded.cache.keys + encoded.cache.values):
            static[:n, :, c.tail - tail:c.tail].copy_(source[index, :, :tail])
        state = self.state
        state.valid.zero_()
        state.valid[:n, c.tail - tail:c.tail] = encoded.valid[index, :tail]
        state.token.fill_(self.pad_id)
        state.token[:n] = encoded.last_logits[index].argmax(-1)
        state.position.zero_()
        state.position[:n] = encoded.next_position[index]
        state.column.fill_(c.tail)
        state.step.fill_(1)
        state.out.fill_(self.pad_id)
        state.limits.zero_()  # padding rows: stopped from the start
        state.limits[:n] = budget if row_budgets is None else torch.as_tensor(row_budgets).to(index.device)
        state.done.zero_()
        state.record(state.token)

    def run(self, budget: int, model) -> None:
        """Decode the loaded rows for ``budget`` tokens (their first is out already)."""
        if budget == 1:
            return
        decoder, _ = language_parts(model)
        with attention_swapped(decoder):
            done = 0
            if self.replay is None:
                self.replay = capture(self.step) if self.graphed else self.step
                done = 1 if self.graphed else 0  # capturing ran the first step
            decode_steps(self.replay, self.state, done, budget)


class ReusedDecoding:
    """Greedy decoding calls that share one :class:`DecodeWorkspace` while their rows fit it."""

    def __init__(self, model, cache_keyword: str, stop_ids: list[int], pad_id: int, cuda_graphs: bool = True,
                 longest_answer: int = 1) -> None:
        """``longest_answer``: answer columns every workspace holds (the longest budget the evaluation decodes)."""
        self.model, self.cache_keyword, self.stop_ids, self.pad_id = model, cache_keyword, stop_ids, pad_id
        self.cuda_graphs, self.longest_answer = cuda_graphs, longest_answer
        self.workspace: DecodeWorkspace | None = None
        self.builds = self.calls = 0

    def tokens(self, encoded: EncodedRows, rows: list[int], budget: int, row_budgets=None):
        """Greedy answers ``(len(rows), budget)`` of ``encoded``'s ``rows``, as :func:`greedy_tokens` gives them."""
        images = [encoded.groups.image_of_row[r] for r in rows]
        need = Capacity.needed(images, encoded.groups.keys[0].shape[0], encoded.tail_width,
                               max(budget, self.longest_answer), encoded.groups.prefix_length)
        if self.workspace is None or not self.workspace.capacity.covers(need):
            old = self.workspace
            start = old.capacity if old is not None and old.capacity.prefix == need.prefix else need
            grown = start.grown(need).with_padding_room()
            self.workspace = None  # free the old buffers (and graph) before the new ones take the memory
            self.workspace = DecodeWorkspace(self.model, self.cache_keyword, grown, encoded, self.stop_ids,
                                             self.pad_id, self.cuda_graphs)
            self.builds += 1
        self.calls += 1
        self.workspace.load(encoded, rows, images, budget, row_budgets)
        self.workspace.run(budget, self.model)
        return self.workspace.state.out[:len(rows), :budget].clone()
