"""Samples to training batches: cached token ids and cached pixel tensors.

Text encoding depends only on the question (prompt, route, KG facts) and the
answer, and pixels only on the image (and, with a mask mode, on the question's
region), so both are computed once per run, not once per epoch.

Three layouts of a batch:

* ``sft``: one right-padded row per question (``input_ids``, ``attention_mask``, ``labels``);
* ``sft`` with ``pack``: one row per image, its questions as segments (:mod:`slakevqa.kernels.packing`);
* ``mc``/``hybrid``: one row per question with its candidates as segments (:mod:`slakevqa.training.choice`).

Images come as the model family's inputs (``pixel_values``, and ``image_grid_thw`` for Qwen2.5-VL),
one image per row, or, with an :class:`ImageFeatureCache` (frozen vision tower, families whose
``fast.feature_cache`` flag is on), as cached ``image_features``; per-token extras (Gemma 3's
``token_type_ids``) come from the family too. Packing needs the family's ``fast.packing`` flag.
"""

from __future__ import annotations

from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.encoding import EncodedExample, batch_stats, encode_examples, pad_batch
from slakevqa.kernels.packing import pack_by_image, with_image_blocks
from slakevqa.models.families.family import images_on
from slakevqa.models.image_features import ImageFeatureCache
from slakevqa.records import VQASample
from slakevqa.training.choice import Choice, make_choice, pack_batch


class ExampleEncoder:
    """Encodes samples for one run; ``batch(samples)`` returns model inputs and batch statistics."""

    def __init__(self, builder: InputBuilder, processor, max_prompt_len: int, max_answer_len: int,
                 objective: str = "sft", pack: bool = False, features: ImageFeatureCache | None = None,
                 family=None, flat: bool = False, window: int | None = None, device=None) -> None:
        """``flat``: the caller lays packed batches end to end in one row once they are on the device, after the
        family's positions (:func:`slakevqa.kernels.packing.flat_for_kernel`; say so only where flash attention's
        variable-length kernel runs the model: ``kernels.segment_attention.varlen_serves``). ``window``: the
        language model's sliding window (``kernels.segment_attention.language_window``); a batch with an example
        longer than it is not packed (:func:`fits_window`). ``device``: where the images' tensors are joined into
        the batch's (each image's cross alone, see :func:`images_on`); None: here."""
        from slakevqa.models.families import DEFAULT_FAMILY, family_named

        self.family = family or family_named(DEFAULT_FAMILY)
        self.builder, self.processor, self.objective = builder, processor, objective
        self.pack = pack and objective == "sft" and self.family.fast.packing
        self.flat = flat and self.pack
        self.features = features  # given only where the family allows it (training.train.uses_feature_cache)
        self.max_prompt_len, self.max_answer_len, self.window = max_prompt_len, max_answer_len, window
        self.device = device
        self.unpacked_over_window = 0  # batches left one row per question: an example passed the window
        self.texts: dict[int, EncodedExample] = {}
        self.choices: dict[int, Choice | None] = {}

    def encode(self, sample: VQASample) -> EncodedExample:
        return self.encode_all([sample])[0]

    def encode_all(self, samples: list[VQASample]) -> list[EncodedExample]:
        """Each sample's example, those not seen before encoded together (two tokenizer calls for all of them)."""
        new = list({s.qid: s for s in samples if s.qid not in self.texts}.values())
        if new:
            tokenizer, chat = self.processor.tokenizer, self.family.chat
            views = [self.builder.view(s) for s in new]
            encoded = encode_examples(tokenizer, [(v.user_text, s.answer, self.image_inputs(s).tokens)
                                                  for s, v in zip(new, views)],
                                      self.max_prompt_len, self.max_answer_len, chat=chat)
            for sample, view, example in zip(new, views, encoded, strict=True):
                self.texts[sample.qid] = example
                self.choices[sample.qid] = (make_choice(tokenizer, view.user_text, view.route, sample.answer,
                                                        self.builder.vocab, chat) if self.objective != "sft" else None)
        return [self.texts[s.qid] for s in samples]

    def image_inputs(self, sample: VQASample):
        return self.builder.image_inputs(sample, self.family, self.processor)

    def pixel_values(self, sample: VQASample):
        return self.image_inputs(sample).pixel_values

    def batch(self, samples: list[VQASample]) -> tuple[dict, dict]:
        examples = self.encode_all(samples)
        pad = self.processor.tokenizer.pad_token_id
        rows = samples  # the sample whose pixels each row takes
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.family.chat.image_token)
        if self.objective != "sft":
            choices = [self.choices[s.qid] for s in samples]
            refuse_past_window(samples, examples, choices, self.window)
            batch = pack_batch(examples, choices, self.objective, pad)
        elif self.pack and not fits_window(examples, self.window):
            self.unpacked_over_window += 1
            batch = pad_batch(examples, pad)
        elif self.pack:
            # flat: the rows go to flash attention's kernel, which reads the layout; no dense mask is built
            batch, firsts = pack_by_image(examples, [self.builder.pixel_key(s) for s in samples], image_id, pad,
                                          dense_mask=not self.flat)
            rows = [samples[i] for i in firsts]
        else:
            batch = pad_batch(examples, pad)
        mask = batch.get("attention_mask")
        if (mask is None or mask.dim() == 4) and self.family.images.bidirectional:  # packed rows of Gemma 3
            batch = with_image_blocks(batch, image_id)
        if self.features is not None:
            batch["image_features"] = self.features.features([self.builder.pixel_key(s) for s in rows],
                                                             lambda i: self.pixel_values(rows[i]))
        else:
            batch.update(self.family.images.collate(images_on([self.image_inputs(s) for s in rows], self.device)))
        batch.update(self.family.images.text_inputs(batch["input_ids"]))
        stats = batch_stats(examples)
        stats["closed_ratio"] = sum(s.is_closed for s in samples) / len(samples)
        return batch, stats

    def stats(self) -> dict:
        return {"encoded_questions": len(self.texts), "cached_images": len(self.builder.pixel_cache),
                "mask": self.builder.mask_stats.as_dict(), "unpacked_over_window": self.unpacked_over_window}


def refuse_past_window(samples: list[VQASample], examples: list[EncodedExample], choices: list[Choice | None],
                       window: int | None) -> None:
    """Raise UserError where a question's choice row would pass the sliding window: its prompt and its longest
    candidate or answer. Choice rows (``--closed_train_objective mc|hybrid``) have no one-row-per-question form
    to fall back on, and their mask reaches the sliding layers untouched (:func:`fits_window`)."""
    from slakevqa.errors import UserError

    if window is None:
        return
    for sample, example, choice in zip(samples, examples, choices, strict=True):
        prompt = len(example.input_ids) - example.answer_tokens
        longest = prompt + max([example.answer_tokens] + [len(c) for c in (choice.candidates if choice else ())])
        if longest > window:
            raise UserError(f"question {sample.qid}: its prompt and longest candidate take {longest} tokens, past the "
                            f"language model's sliding window ({window}); choice rows cannot slide: lower "
                            "--max_prompt_len or train with --closed_train_objective sft")


def fits_window(examples: list[EncodedExample], window: int | None) -> bool:
    """Whether every example lies inside the sliding window, so that packing cannot change what it attends.

    A packed batch attends through its own mask or layout, which transformers passes on untouched to every layer,
    sliding ones included: an example longer than the window would see keys the model's sliding layers hide from
    it. Such a batch stays one row per question, where the model builds its own sliding masks.

    >>> fits_window([EncodedExample((1, 2, 3), (-100, -100, 3), 2, 1, False, False)], 3)
    True
    >>> fits_window([EncodedExample((1, 2, 3), (-100, -100, 3), 2, 1, False, False)], 2)
    False
    """
    return window is None or max(len(e.input_ids) for e in examples) <= window
