"""Rows that share image prefixes: attention that reads each image's prefix once, not once per question.

A batch of questions about a few images is encoded as::

    prefix cache   one row per image:     <s> [INST] <image>x576 \\n        keys/values (n_images, kv, P, d)
    row cache      one row per question:  [left padding] question [/INST] answer...   (rows, kv, S, d)

Every row attends to its image's prefix and to its own columns. The prefix is never
copied per row (``DynamicCache.reorder_cache`` used to repeat 578 tokens of keys and
values for each of 256 questions: ~20 GB at 7B, read again at every decoding step).
Attention gathers the *queries* of each image's rows instead and multiplies them with
that image's prefix once (a grouped matmul), then adds the row's own columns; one
softmax over both parts, as a plain causal attention over ``prefix + row`` would do.

The model's own decoder layers run unchanged (projections, RoPE, norms, MLP, LoRA
adapters): only the attention function and the cache are ours, through transformers'
attention interface (``AttentionInterface.register``) and a cache object whose
``update`` writes into preallocated buffers (no per-step ``torch.cat``).

Example (what :mod:`slakevqa.evaluation.row_decoding` does; the buffers come from
:mod:`slakevqa.evaluation.packed_prefill`)::

    >>> groups = ImageGroups.build([0, 0, 1], prefix_keys, prefix_values, "cuda")  # rows 0-1: image 0
    >>> rows = RowCache(row_keys, row_values, start=40)        # per layer (3, kv, 40 + 16, d): tails + answer
    >>> with attention_swapped(decoder):
    ...     hidden = run_rows(model, ids, positions, rows, groups, key_mask, "cache")  # writes columns 40...
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_NAME = "slakevqa_shared_prefix"


def language_parts(model):
    """``(decoder, lm_head)`` of a model (peft-wrapped or not), its family's parts, or None if the decoder is
    not a stack the rows can run.

    The decoder must be a Llama-family stack (``embed_tokens``, ``rotary_emb``, ``layers``, ``norm``)
    whose attention layers number themselves (``self_attn.layer_idx``) and take no logit soft-capping
    (Gemma 2's; the rows' attention has none).
    """
    from slakevqa.errors import UserError
    from slakevqa.models.families import family_of

    try:
        parts = family_of(model).parts
    except UserError:  # a model of no declared family (a test's plain module): no rows
        return None
    decoder, head = parts.module(model, "language_model"), parts.module(model, "lm_head")
    needed = ("embed_tokens", "rotary_emb", "layers", "norm")
    if decoder is None or head is None or not all(hasattr(decoder, name) for name in needed):
        return None
    if not all(hasattr(getattr(layer, "self_attn", None), "layer_idx") for layer in decoder.layers):
        return None
    if getattr(decoder.config, "attn_logit_softcapping", None) is not None:
        return None
    return decoder, head


def supports_shared_prefix(model) -> bool:
    return language_parts(model) is not None


@dataclass
class ImageGroups:
    """Which prefix each row reads, as gathers that put each image's rows side by side.

    ``slot[i, r]`` is the row that is image ``i``'s r-th (row 0 pads images with fewer
    rows; their results are never read back); ``flat[row]`` is ``i * R + r``. For flash
    attention's variable-length kernel (``varlen``): ``order`` lists the rows image by image
    (``inverse`` undoes it), ``members`` counts each image's rows, and ``packed_prefix`` holds
    each layer's prefixes back to back, ``(n_images * P, kv, d)``, made on first use.
    """

    slot: object  # (n_images, R) long
    flat: object  # (rows,) long
    keys: list    # per layer (n_images, kv, P, d)
    values: list
    image_of_row: list[int]
    order: object = None    # (rows,) long
    inverse: object = None  # (rows,) long
    members: object = None  # (n_images,) long
    varlen: bool = False
    packed_prefix: dict = None  # layer -> (keys, values), shared by every select()

    @staticmethod
    def build(image_of_row: list[int], prefix_keys: list, prefix_values: list, device, varlen: bool = False,
              packed_prefix: dict | None = None, member_slots: int | None = None) -> "ImageGroups":
        """``member_slots``: the width of ``slot`` (default: the most rows of one image)."""
        import torch

        n_images = prefix_keys[0].shape[0]
        members: list[list[int]] = [[] for _ in range(n_images)]
        for row, image in enumerate(image_of_row):
            members[image].append(row)
        width = max(len(m) for m in members) if member_slots is None else member_slots
        slot = torch.tensor([m + [0] * (width - len(m)) for m in members], dtype=torch.long, device=device)
        slot_of = {row: image * width + r for image, rows in enumerate(members) for r, row in enumerate(rows)}
        flat = torch.tensor([slot_of[row] for row in range(len(image_of_row))], dtype=torch.long, device=device)
        order = [row for m in members for row in m]
        inverse = [0] * len(order)
        for position, row in enumerate(order):
            inverse[row] = position
        return ImageGroups(slot, flat, prefix_keys, prefix_values, list(image_of_row),
                           torch.tensor(order, dtype=torch.long, device=device),
                           torch.tensor(inverse, dtype=torch.long, device=device),
                           torch.tensor([len(m) for m in members], dtype=torch.long, device=device), varlen,
                           {} if packed_prefix is None else packed_prefix)

    @staticmethod
    def stored_once(image_of_row: list[int], prefix_keys: list, prefix_values: list, device,
                    varlen: bool = False) -> "ImageGroups":
        """:meth:`build` on copies of the prefixes ``(n_images, kv, P, d)``, each kept once: with ``varlen``, back to
        back as flash attention reads them, the grouped matmuls reading strided views of the same memory (a second,
        transposed copy made on first use held ~2 GB more at 7B and batch 256); else contiguous."""
        if not varlen:
            return ImageGroups.build(image_of_row, [k.contiguous() for k in prefix_keys],
                                     [v.contiguous() for v in prefix_values], device)
        packed, views = {}, ([], [])
        for layer, pair in enumerate(zip(prefix_keys, prefix_values)):
            n, _, length, _ = pair[0].shape
            packed[layer] = tuple(t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in pair)
            for view, flat in zip(views, packed[layer]):
                view.append(per_image(flat, n, length))
        return ImageGroups.build(image_of_row, *views, device, True, packed)

    def select(self, rows: list[int]) -> "ImageGroups":
        """The groups of ``rows`` (row indices, repeats allowed): each new row keeps its image."""
        return ImageGroups.build([self.image_of_row[row] for row in rows], self.keys, self.values, self.flat.device,
                                 self.varlen, self.packed_prefix)

    def prefix_back_to_back(self, layer: int) -> tuple:
        """Layer ``layer``'s prefixes as flash attention's sequences: ``(n_images * P, kv, d)`` keys and values."""
        if layer not in self.packed_prefix:
            keys, values = self.keys[layer], self.values[layer]
            self.packed_prefix[layer] = tuple(t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])
                                              for t in (keys, values))
        return self.packed_prefix[layer]

    @property
    def prefix_length(self) -> int:
        return int(self.keys[0].shape[2])


def per_image(back_to_back, images: int, length: int):
    """``(images, kv, length, d)``: a view of prefixes laid back to back ``(images * length, kv, d)`` (flash attention's
    layout), for the grouped matmuls; no copy."""
    return back_to_back.view(images, length, *back_to_back.shape[1:]).transpose(1, 2)


@dataclass
class RowCache:
    """Preallocated keys and values of every row's own columns, per layer ``(rows, kv, width, d)``.

    ``start`` is the column the next ``update`` writes at (an int, or a 0-d long tensor so that a
    captured CUDA graph can advance it); transformers' attention layers call ``update``.
    """

    keys: list
    values: list
    start: object = 0

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):

        # a model whose forward runs under autocast (accelerate's fp16 training: fp32 weights) filled the
        # buffers in the autocast dtype, while layers called directly compute in the weights' dtype
        key_states = key_states.to(self.keys[layer_idx].dtype)
        value_states = value_states.to(self.values[layer_idx].dtype)
        if isinstance(self.start, int):
            end = self.start + key_states.shape[2]
            self.keys[layer_idx][:, :, self.start:end] = key_states
            self.values[layer_idx][:, :, self.start:end] = value_states
        else:  # one column at a device-side position (CUDA graphs replay this)
            self.keys[layer_idx].index_copy_(2, self.start.view(1), key_states)
            self.values[layer_idx].index_copy_(2, self.start.view(1), value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def select(self, rows, width: int) -> "RowCache":
        """A new cache of ``rows`` (index tensor, repeats allowed), ``width`` columns, the old ones copied in."""
        import torch

        def widen(t):
            out = torch.zeros((len(rows), t.shape[1], width, t.shape[3]), dtype=t.dtype, device=t.device)
            out[:, :, :t.shape[2]] = t[rows]
            return out

        return RowCache([widen(k) for k in self.keys], [widen(v) for v in self.values])


def shared_prefix_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                            image_groups: ImageGroups | None = None, **kwargs):
    """Attention of ``query`` (rows, H, L, d) over its image's prefix and its own columns ``key``/``value``.

    ``attention_mask`` is boolean ``(rows, L, width)``: which of its own columns each query sees.
    Heads share keys as grouped-query attention does (head ``h`` reads key head ``h // (H / kv)``).
    Returns ``((rows, L, H, d), None)``, as transformers' attention functions do.
    """
    import torch

    from slakevqa.kernels.segment_attention import varlen_kernel

    groups = image_groups
    kernel = varlen_kernel(query, key.dtype) if groups.varlen else None
    if kernel is not None:
        return prefix_and_own_attention(kernel, module.layer_idx, query, key, value, attention_mask, scaling, groups)
    rows, heads, length, dim = query.shape
    kv = key.shape[1]
    per_key = heads // kv * length  # queries per key head and row: head h reads key head h // (heads / kv)
    prefix_k, prefix_v = groups.keys[module.layer_idx], groups.values[module.layer_idx]
    images, members = groups.slot.shape
    prefix = prefix_k.shape[2]
    q = query.reshape(rows, kv, per_key, dim).to(key.dtype)  # no broadcast over heads: matmuls would copy keys

    def to_images(t):  # (rows, kv, per_key, x) -> (images, kv, members * per_key, x)
        return t[groups.slot].transpose(1, 2).reshape(images, kv, members * per_key, t.shape[-1])

    def to_rows(t):  # the inverse of to_images, keeping only real rows
        t = t.view(images, kv, members, per_key, t.shape[-1]).transpose(1, 2)
        return t.reshape(images * members, kv, per_key, t.shape[-1])[groups.flat]

    scores_prefix = to_rows(torch.matmul(to_images(q), prefix_k.transpose(-1, -2)))
    scores_own = torch.matmul(q, key.transpose(-1, -2)).view(rows, kv, heads // kv, length, key.shape[2])
    scores_own = scores_own.masked_fill(~attention_mask[:, None, None], float("-inf")).view(rows, kv, per_key, -1)
    scores = torch.cat([scores_prefix, scores_own], dim=-1).float() * scaling
    probs = torch.softmax(scores, dim=-1).to(key.dtype)
    probs_prefix, probs_own = probs.split([prefix, key.shape[2]], dim=-1)
    out = to_rows(torch.matmul(to_images(probs_prefix.contiguous()), prefix_v)) + torch.matmul(probs_own, value)
    return out.view(rows, heads, length, dim).transpose(1, 2).contiguous().to(query.dtype), None


def prefix_and_own_attention(kernel, layer: int, query, key, value, attention_mask, scaling: float,
                              groups: ImageGroups):
    """:func:`shared_prefix_attention` with the prefix part in flash attention's variable-length kernel.

    Each image is one sequence: its rows' queries (no mask: a question sees its whole prefix)
    against its prefix's keys, read in place. The row's own columns (a few dozen, masked) take
    plain matmuls. The two partial softmaxes merge by their log-sum-exps, which is one softmax
    over prefix + own columns. At the 7B shape the grouped matmuls this replaces, and the copies
    that feed them, took ~7 of a decoding step's ~15 ms of GPU time (benchmarks/RESULTS.md).
    """
    import torch

    rows, heads, length, dim = query.shape
    kv = key.shape[1]
    q = query.to(key.dtype)
    prefix_keys, prefix_values = groups.prefix_back_to_back(layer)
    prefix = groups.prefix_length
    by_image = q.transpose(1, 2)[groups.order].reshape(rows * length, heads, dim)
    cu_q = torch.zeros(groups.members.shape[0] + 1, dtype=torch.int32, device=q.device)
    cu_q[1:] = torch.cumsum(groups.members * length, 0)
    cu_k = torch.arange(0, (groups.members.shape[0] + 1) * prefix, prefix, dtype=torch.int32, device=q.device)
    # max_q is an upper bound; at 1 FlashAttention-2 assumes one query per sequence (it swaps query heads
    # into the sequence dimension), which an image without rows here breaks: never pass 1
    longest = max(2, int(groups.slot.shape[1]) * length)
    out_prefix, lse_prefix = kernel(by_image, prefix_keys, prefix_values, cu_q, cu_k, longest, prefix, scaling,
                                    causal=False)
    out_prefix = out_prefix.view(rows, length, heads, dim)[groups.inverse].transpose(1, 2)  # (rows, H, L, d)
    lse_prefix = lse_prefix.view(heads, rows, length)[:, groups.inverse].transpose(0, 1)    # (rows, H, L)

    per_key = heads // kv * length  # head h reads key head h // (heads / kv)
    scores = torch.matmul(q.reshape(rows, kv, per_key, dim), key.transpose(-1, -2))
    scores = scores.view(rows, kv, heads // kv, length, -1).masked_fill(~attention_mask[:, None, None], float("-inf"))
    scores = scores.view(rows, kv, per_key, -1).float() * scaling
    lse_own = torch.logsumexp(scores, dim=-1, keepdim=True)
    out_own = torch.matmul(torch.exp(scores - lse_own).to(key.dtype), value).view(rows, heads, length, dim)
    lse_own = lse_own.view(rows, heads, length)

    total = torch.logaddexp(lse_prefix, lse_own)[..., None]
    out = out_prefix.float() * torch.exp(lse_prefix[..., None] - total) + out_own.float() * torch.exp(
        lse_own[..., None] - total)
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def attention_swapped(decoder):
    """The decoder's layers use :func:`shared_prefix_attention` inside the block (and their own after)."""
    from slakevqa.kernels.attention import attention_function

    return attention_function(decoder.config, ATTENTION_NAME, shared_prefix_attention)


def run_rows(model, input_ids, position_ids, cache: RowCache, groups: ImageGroups, key_mask, cache_keyword: str):
    """Last hidden states (rows, L, hidden) of ``input_ids`` (rows, L) written at ``cache.start``.

    ``key_mask`` (rows, L, width) bool: the row's own columns each token sees (itself included).
    Call inside :func:`attention_swapped`.
    """
    from slakevqa.models.families import family_of

    decoder, _ = language_parts(model)
    hidden = decoder.embed_tokens(input_ids)
    embeddings = family_of(model).text_rotary(decoder, hidden, position_ids)  # text tokens: 1-D positions
    for layer, embedding in zip(decoder.layers[:decoder.config.num_hidden_layers], embeddings):
        out = layer(hidden, attention_mask=key_mask, position_ids=position_ids, use_cache=True,
                    position_embeddings=embedding, image_groups=groups, **{cache_keyword: cache})
        hidden = out[0] if isinstance(out, tuple) else out
    return decoder.norm(hidden)


def prefix_layers(cache) -> tuple[list, list]:
    """Per-layer keys and values of a transformers ``DynamicCache`` (one row per image)."""
    if hasattr(cache, "layers"):
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)
