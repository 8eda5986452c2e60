"""Fine-tuning on SLAKE: :func:`~slakevqa.training.train.train` top to bottom.

Parameters (``params.py``), batches (``examples.py``), the loss (``loss.py``, ``choice.py``), precision,
schedule, checkpoints, speed levers, TensorBoard and probes; the final evaluation goes through
:mod:`slakevqa.evaluation`, the layer below.
"""
