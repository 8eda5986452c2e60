"""SLAKE's files as :class:`~slakevqa.records.VQASample` records, in any layout, and everything read beside them.

``slake.py`` (layouts and split files), ``hub.py`` (the Hugging Face release), ``images.py``,
``masks.py`` / ``mask_classes.py`` / ``annotations.py`` (mask conditioning), ``kg.py`` (the knowledge
graph), ``synth*.py`` (the learnable synthetic SLAKE), ``sft.py`` / ``llama_factory.py`` (exports),
``stats.py``, ``settings.py`` (``DataSettings``). Nothing here imports torch or a model.
"""
