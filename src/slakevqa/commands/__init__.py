"""One module per ``slakevqa`` verb (``add_arguments(parser)``, ``run(args)``), imported lazily by ``cli.py``;
``dataset_args.py`` and ``scoring_args.py`` are the flags several verbs share, ``flags_doc.py`` writes docs/flags.md."""
