"""The fast backend's prefill where a packed causal row cannot carry the image: the prefix through the model.

Gemma 3's image tokens attend to each other in both directions (``token_type_ids``), and Qwen2.5-VL's
take 3-D positions (M-RoPE): :mod:`.packed_prefill`'s one causal row of 1-D positions has room for
neither. So each image's prefix (every prompt's tokens up to its last image token, the same for all
questions of the batch) runs through the model's own forward once, one row per image, with the
family's image inputs and positions; then every question's tail runs as a row that reads its
image's prefix in place (:mod:`slakevqa.kernels.shared_prefix`)::

    prefix forward   one row per image      <bos><start_of_turn>user\\n\\n\\n<start_of_image><img>x256
                                            (the model's own masks, vision tower, positions)
    tail rows        one row per question   [left padding] <end_of_image>\\n\\n question<end_of_turn>\\n...
                                            positions go on from the prefix's next text position:
                                            its length (Gemma 3), its largest M-RoPE position + 1 (Qwen2.5-VL)

Text after an image takes one position on all three M-RoPE axes (``family.text_rotary``), so the rows
need no 3-D positions. What comes out is the :class:`~.row_decoding.EncodedRows` the packed prefill
gives, where CLOSED scoring and greedy decoding continue unchanged.
"""

from __future__ import annotations

from slakevqa.kernels.shared_prefix import (
    ImageGroups,
    RowCache,
    attention_swapped,
    language_parts,
    prefix_layers,
    run_rows,
)


def prefix_forward(model, family, prefix_ids: list[list[int]], images: list, pad_id: int):
    """Per-layer prefix keys and values ``(n_images, kv, P, d)`` and each image's next text position ``(n_images,)``."""
    from slakevqa.kernels import compat
    from slakevqa.models.families.family import prompt_batch

    batch = prompt_batch(family, prefix_ids, images, pad_id, model)
    positions = family.position_ids(model, batch["input_ids"], batch["attention_mask"], batch)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    following = family.next_positions(positions, 1)  # (n, 1), or (3, n, 1) with the same value on every axis
    keys, values = prefix_layers(compat.returned_cache(out))
    following = following[0] if following.dim() == 3 else following  # M-RoPE: every axis holds the same value
    return keys, values, following[:, 0]


def tail_rows(prompts: list[list[int]], prefix: int, pad_id: int, device):
    """``(tokens, valid)``: each prompt after its first ``prefix`` ids, right-aligned (left-padded) in ``(rows, width)``.

    >>> [t.tolist() for t in tail_rows([[1, 2, 3, 4], [1, 2, 5]], 2, 0, "cpu")]
    [[[3, 4], [0, 5]], [[True, True], [False, True]]]
    """
    import torch

    width = max(len(p) - prefix for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tail = prompt[prefix:]
        tokens[row, width - len(tail):] = torch.tensor(tail)
        valid[row, width - len(tail):] = True
    return tokens.to(device), valid.to(device)


def encode_by_prefix(model, family, cache_keyword: str, prompts: list[list[int]], groups: list[list[int]],
                     images: list, prefix: int, pad_id: int, varlen: bool = True):
    """Run ``prompts`` (``groups[i]`` lists image ``i``'s prompts; ``images`` one ImageInputs per group) and return
    their :class:`~.row_decoding.EncodedRows`, row ``j`` for ``prompts[j]``."""
    import torch

    from slakevqa.evaluation.row_decoding import EncodedRows

    decoder, head = language_parts(model)
    device = head.weight.device
    keys, values, following = prefix_forward(model, family, [prompts[g[0]][:prefix] for g in groups], images,
                                             pad_id)
    image_of = [0] * len(prompts)
    for image, group in enumerate(groups):
        for j in group:
            image_of[j] = image
    tokens, valid = tail_rows(prompts, prefix, pad_id, device)
    rows, width = tokens.shape
    lengths = valid.sum(-1)
    start = following[torch.tensor(image_of, device=following.device)].to(device)  # each row's first tail position
    positions = (start[:, None] + torch.arange(width, device=device) - (width - lengths)[:, None]).clamp_min(start[:, None])
    cache = RowCache([k.new_zeros((rows, k.shape[1], width, k.shape[3])) for k in keys],
                     [v.new_zeros((rows, v.shape[1], width, v.shape[3])) for v in values])
    groups_of_rows = ImageGroups.stored_once(image_of, keys, values, device, varlen)
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    # a padding query sees itself: its keys and values stay finite (another row's masked NaN would still poison
    # the matmul with the probabilities, 0 * NaN), and no one reads them
    sees = (valid[:, None, :] & causal) | torch.eye(width, dtype=torch.bool, device=device)
    with attention_swapped(decoder):
        hidden = run_rows(model, tokens, positions, cache, groups_of_rows, sees, cache_keyword)
    return EncodedRows(cache, groups_of_rows, valid, start + lengths, head(hidden[:, -1]), width)
