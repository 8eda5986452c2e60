"""How attention runs on packed rows, and what differs between the transformers releases we support.

* ``packing.py``: the packed-row layout (an image prefix, then one segment per question) with its dense mask;
* ``segment_attention.py``: the same rows through flash attention's variable-length kernel;
* ``shared_prefix.py``: decoding rows that read their image's prefix in place;
* ``attention.py``: :class:`~slakevqa.kernels.attention.AttentionSettings` and sdpa's kernel choice;
* ``compat.py``: transformers-version differences, asked by release or signature.

Each fast path has a plain one beside it (sdpa over the dense mask, grouped matmuls), and tests
assert that both give the same losses and answers.
"""
