"""From a SLAKE question to the token ids the model reads, in the order the stages run.

    VQASample --routing.py-------> Route (OPEN, yes/no, parsed options, vocabulary) from the question alone
              --builder.py-------> SampleView: the user text (prompt style, KG facts) and the image (masks)
              --prompts.py-------> the chat format around the user text (one Jinja template)
              --encoding.py------> prompt and answer token ids, the image placeholder expanded

``settings.py`` holds :class:`~slakevqa.inputs.settings.InputSettings` (what the model is shown,
shared by training and evaluation); ``vocab.py`` the CLOSED vocabulary routing falls back to;
``answer_keys.py`` the one comparison of answers and candidates. Nothing here imports torch or a model.
"""
