"""Answering a SLAKE split with a model: :func:`~slakevqa.evaluation.evaluate.evaluate` top to bottom.

``engine.py`` answers batches (OPEN generation, CLOSED candidate scoring) on the plain or the fast
path; ``packed_prefill.py`` and ``row_decoding.py`` are the fast path's two halves; ``store.py``
appends answers as they come; ``diagnose*.py`` is ``--mode diagnose``. Nothing here imports training.
"""
