"""What a run folder holds and how it is identified.

* ``fingerprint.py``: ``run_fingerprint.json``, so a rerun resumes only the same run;
* ``results.py``: ``predictions.jsonl`` in, ``results.json`` out, with provenance.
"""
