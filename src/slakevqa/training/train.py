"""`train(cfg)`: fine-tune a LLaVA-family model on SLAKE, top to bottom.

    data -> prompts/images -> model + trainable parameters -> optimiser/schedule
    -> (resume) -> loop: micro-batches, answer-only loss, clip, step, log, checkpoint
    -> adapter or full model + processor + closed_vocab.json + run_config.json -> final evaluation

One process or many (``accelerate launch``): each process takes its slice of every
batch; gradients are averaged by DDP. Everything that decides a number (data
order, dropout, initialisation) is seeded from ``cfg.seed`` and restored on resume.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from slakevqa import stopping
from slakevqa.data.slake import find_layout, load_split, load_training_split, require_questions
from slakevqa.distributed import agreed_signal, is_fsdp, step_share, step_total, use_cpu
from slakevqa.errors import UserError
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.image_prefetch import ImagePrefetch, worker_count
from slakevqa.inputs.vocab import build_closed_vocab, save_closed_vocab
from slakevqa.kernels.attention import attention_kernels
from slakevqa.kernels.packing import flat_for_kernel
from slakevqa.kernels.segment_attention import language_window, segments_attended, varlen_serves
from slakevqa.locks import refuse_if_being_written
from slakevqa.models.families import family_of
from slakevqa.models.families.family import packed_inputs
from slakevqa.models.image_features import ImageFeatureCache, kept_pixel_dtype
from slakevqa.models.model_files import check_not_half_saved
from slakevqa.runs.results import sha256_file
from slakevqa.training.checkpoint import (
    load_checkpoint,
    read_trainer_state,
    register_checkpoint_hooks,
    resolve_resume,
    save_checkpoint,
    write_trainer_state,
)
from slakevqa.training.config import TrainConfig
from slakevqa.training.elastic import elastic_seed, keep_global_batch, written_by
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.guards import (
    check_fsdp_settings,
    refuse_nonfinite_weights,
    refuse_output_over_model,
    stop_on_nonfinite_step,
)
from slakevqa.training.loss import answer_loss, answer_tokens, out_of_memory_advice, packed_loss
from slakevqa.training.params import configure_trainable, parameter_counts
from slakevqa.training.precision import (
    adapter_layers,
    adapters_under_autocast,
    autocast_precision,
    precision_layout,
    training_device_type,
    weight_dtype,
)
from slakevqa.training.probe import build_probe
from slakevqa.training.run_config import write_run_config
from slakevqa.training.run_folder import claim_train_folder
from slakevqa.training.schedule import (
    build_scheduler,
    step_rows,
    steps_per_epoch,
    total_steps,
    warmup_steps,
)
from slakevqa.training.speed_levers import apply_speed_levers, keep_activations, kernels_for
from slakevqa.training.tensorboard import TrainLogger
from slakevqa.training.throughput import peak_memory_per_process, throughput_summary
from slakevqa.training.trackers import check_trackers_installed
from slakevqa.training.trained_output import save_trained

log = logging.getLogger(__name__)
DRY_RUN_RECORDS, DRY_RUN_STEPS = 8, 2


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[list[float]]  # [step, loss] per optimiser step, this process's view
    parameter_counts: dict
    results: dict | None = None  # the final evaluation's results.json (empty on processes other than the main one)
    final_eval_dir: Path | None = None  # where the final evaluation wrote its answers and results


def train(cfg: TrainConfig, model=None, processor=None) -> TrainResult:
    """Run training as ``cfg`` says. ``model``/``processor`` skip loading (tests, notebooks)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    # Accelerate keeps one precision per process: a second train() (a notebook, a test) may ask for another.
    # Only the accelerator-level state goes; the process group (PartialState) stays.
    AcceleratorState._reset_state()
    # cpu=: without CUDA, join torchrun's group over gloo (see slakevqa.distributed.use_cpu).
    # step_scheduler_with_optimizer=False: the schedule moves once per optimiser step (accelerate would move a
    # prepared scheduler once per process, for schedules counted in single-process steps; ours count all processes).
    accelerator = Accelerator(cpu=use_cpu(), mixed_precision=autocast_precision(cfg, training_device_type()),
                              step_scheduler_with_optimizer=False)
    if is_fsdp(accelerator):
        check_fsdp_settings(cfg)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    check_not_half_saved(cfg.model_id)  # a model folder mid-save, an adapter without weights: refused now
    refuse_if_being_written(cfg.model_id, "--model_id")  # another training extending it
    refuse_output_over_model(cfg.model_id, out)  # saving publishes config.json and weights into out

    # ---- data, vocabulary, prompts
    root = cfg.data.root()
    layout = find_layout(root)
    samples = load_training_split(root, cfg.split, cfg.data.language, cfg.data.missing_images)
    if cfg.dry_run:
        samples = samples[:DRY_RUN_RECORDS]
    samples = require_questions(samples, root, cfg.split, cfg.data.language)
    out.mkdir(parents=True, exist_ok=True)  # after the data: a refusal there leaves no folder
    vocab = build_closed_vocab(load_split(root, "train", cfg.data.language, cfg.data.missing_images),
                               sha256_file(layout.split_file("train")))
    builder = InputBuilder.create(layout, vocab, settings=cfg.inputs)
    cfg = keep_global_batch(cfg, out, accelerator.num_processes)  # a checkpoint resumed on another number of GPUs
    claim_train_folder(cfg, out, layout.split_file(cfg.split), builder, accelerator)  # before the model loads
    check_trackers_installed(cfg)  # a missing wandb/mlflow fails now, not after loading the model
    if accelerator.is_main_process:
        save_closed_vocab(vocab, out / "closed_vocab.json")

    # ---- model and what trains
    if model is None:
        model, processor = load_for_training(cfg, accelerator.device)
    family = family_of(model)
    check_family_supports(cfg, family)
    builder.pixel_dtype = kept_pixel_dtype(model)  # bf16 pixels for a bf16 tower: half the memory, the same values
    model = configure_trainable(model, cfg.use_lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                cfg.lora_target_modules, cfg.lora_scope, cfg.tune_mm_projector,
                                cfg.freeze_vision_tower, cfg.unfreeze_last_llm_layers)
    # fp32 adapters take bf16 inputs inside each bf16-autocast step only (training/precision.py)
    autocast_adapters = adapter_layers(model) if accelerator.mixed_precision == "bf16" else []
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_activations(model, cfg.gradient_checkpointing_keep)
    # after peft (Liger's SwiGLU calls peft's wrapped projections) and before DDP/FSDP wrap the model
    speed, _ = apply_speed_levers(model, kernels_for(cfg, accelerator), cfg.compile_layers, accelerator.device.type,
                                  family)
    # packed rows' flash varlen attention (a keyword the compiled layers would guard and recompile on)
    varlen = cfg.attention.varlen_attention and not cfg.compile_layers
    speed["varlen_attention"] = varlen and accelerator.device.type == "cuda"
    counts = parameter_counts(model)
    features = ImageFeatureCache(model) if uses_feature_cache(cfg, accelerator, family) else None
    encoder = ExampleEncoder(builder, processor, cfg.inputs.max_prompt_len, cfg.max_answer_len, cfg.closed_train_objective,
                             pack=cfg.pack_images, features=features, family=family,
                             flat=varlen and varlen_serves(model),  # the kernel runs here: its device, dtype
                             window=language_window(model), device=accelerator.device)
    speed["packed"], speed["flat_packing"] = encoder.pack, encoder.flat
    groups = image_group_ids(samples, builder) if encoder.pack else None  # batches follow the image
    pad_id = processor.tokenizer.pad_token_id
    probe = build_probe(cfg, root, samples, builder, processor, accelerator, family)  # held-out diagnostics, or None

    # ---- optimiser and schedule (pure functions of the step)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2),
                                  fused=fused_adamw_supported(accelerator.device))
    n_steps = DRY_RUN_STEPS if cfg.dry_run else total_steps(
        len(samples), cfg.batch_size, cfg.grad_accum, cfg.num_epochs, cfg.max_steps, accelerator.num_processes)
    scheduler = build_scheduler(optimizer, cfg.lr_scheduler, n_steps,
                                warmup_steps(n_steps, cfg.warmup_steps, cfg.warmup_ratio))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_checkpoint_hooks(accelerator)  # checkpoints hold the trainable weights, not the frozen base
    per_epoch = steps_per_epoch(len(samples), cfg.batch_size, cfg.grad_accum, accelerator.num_processes)

    # ---- resume: weights, optimiser, schedule, every process's RNG; the data position is the step
    history, start = resume(cfg, out, accelerator, n_steps)  # history: one log_history entry per step

    # ---- the loop
    logger = TrainLogger(cfg, out, enabled=accelerator.is_main_process, main=accelerator.is_main_process)
    logger.start(samples, counts, n_steps, builder, probe, family.chat)

    @functools.lru_cache(maxsize=2 * cfg.grad_accum)  # a step's rows are asked for twice: images ahead, then the batch
    def micro_batch_rows(step: int, micro: int) -> list[int]:
        return step_rows(step, micro, len(samples), cfg.batch_size, cfg.grad_accum, cfg.seed,
                         accelerator.process_index, world, groups)

    def step_samples(step: int) -> list:
        """This process's questions of ``step`` (none past the last step)."""
        return [samples[i] for micro in range(cfg.grad_accum) for i in micro_batch_rows(step, micro)
                ] if step < n_steps else []

    def encoded_micro_batch(step: int, micro: int) -> tuple[list[int], dict, dict, float]:
        """This process's rows of the micro-batch, its tensors on the device, its statistics, and its weight in
        the step's loss: its answer tokens (SFT), or its questions (mc, hybrid: their choice losses are means
        over questions)."""
        rows = micro_batch_rows(step, micro)
        images.wait([samples[i] for i in rows])  # prepared by the workers while the last step ran
        batch, stats = encoder.batch([samples[i] for i in rows])
        weight = float(answer_tokens(batch["labels"])) if cfg.closed_train_objective == "sft" else float(len(rows))
        # without varlen the layout stays out of the forward (compiled layers would guard on it)
        batch = {k: v.to(accelerator.device) for k, v in batch.items() if varlen or k != "segment_layout"}
        batch = packed_inputs(family, model, batch)  # Qwen2.5-VL's packed rows: M-RoPE
        flat = encoder.flat and "segment_layout" in batch  # not a batch left unpacked by the sliding window
        return rows, flat_for_kernel(batch) if flat else batch, stats, weight
    model.train()
    step_seconds: list[float] = []
    world = accelerator.num_processes
    single = world == 1 and cfg.grad_accum == 1  # one micro-batch of one process: its loss is the step's
    # worker threads prepare the next step's images while this one runs on the device (inputs/image_prefetch.py)
    images = ImagePrefetch(builder, family, processor, worker_count(cfg.prefetch_workers, accelerator.device.type))
    images.submit(step_samples(start))
    with stopping.graceful(), images:  # SIGTERM / SIGUSR1 / Ctrl-C: the step finishes, a checkpoint, exit 75 (stopping.py)
        for step in range(start, n_steps):
            began, batch_stats = time.perf_counter(), []
            micro_batches = [encoded_micro_batch(step, micro) for micro in range(cfg.grad_accum)]
            images.submit(step_samples(step + 1))
            # the step's loss is a mean over every answer token of its global batch, however it is cut (elastic.py)
            total = step_total(sum(weight for _, _, _, weight in micro_batches), accelerator)
            logged = 0.0
            for micro, (rows, batch, stats, weight) in enumerate(micro_batches):
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast(), adapters_under_autocast(autocast_adapters), \
                        attention_kernels(cfg.attention.cudnn_attention), segments_attended(model, varlen), \
                        out_of_memory_advice(cfg, step + 1):
                    if cfg.closed_train_objective == "sft":
                        loss, _, row_losses = answer_loss(model, batch)
                    else:
                        (loss, _, row_losses), choice_stats = packed_loss(model, batch, mc_weight(cfg))
                        stats.update(choice_stats)
                    accelerator.backward(step_share(loss, weight, total, world))
                if not single:
                    logged = logged + loss.detach().float() * weight
                batch_stats.append(stats)
                logger.record_rows([samples[i] for i in rows], row_losses, batch["input_ids"] != pad_id)
            # one micro-batch of one process: its own mean, not (mean * tokens) / tokens rounded again
            loss_sum = float(loss.detach()) if single else step_total(float(logged), accelerator) / max(total, 1.0)
            # All of the prepared model's parameters (frozen ones have no grad): under FSDP accelerate
            # only computes the global, cross-shard norm when given exactly model.parameters().
            grad_norm = (accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                         if cfg.max_grad_norm > 0 else None)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses (after scheduler.step() it is the next one's)
            stop_on_nonfinite_step(step + 1, loss_sum, grad_norm, lr, out)
            with out_of_memory_advice(cfg, step + 1):  # the first step allocates AdamW's state
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(log_entry(step + 1, per_epoch, loss_sum, lr, grad_norm))
            step_seconds.append(time.perf_counter() - began)  # the step itself: no evaluation, probe or checkpoint
            logger.step(step + 1, loss_sum, lr, grad_norm, batch_stats, step_seconds[-1],
                        accelerator.unwrap_model(model))
            stop = agreed_signal(stopping.pending(), accelerator)  # every process stops after the same step
            if (step + 1) % cfg.save_steps == 0 or step + 1 == n_steps or stop:  # every process takes part
                refuse_nonfinite_weights(model, step + 1, accelerator)
                saved = save_checkpoint(accelerator, out, step + 1,
                                        lambda folder: write_state(cfg, folder, history, n_steps), cfg.save_total_limit)
            if stop:
                logger.close()  # the events so far reach disk; no final probe under a deadline
                raise stopping.Stopped(stop, note=f"after step {step + 1} of {n_steps}, {saved} was written")

    # ---- outputs
    losses = [[entry["step"], entry["loss"]] for entry in history]
    accelerator.wait_for_everyone()
    throughput = throughput_summary(step_seconds, cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
                                    accelerator.num_processes, peak_memory_per_process(accelerator))
    # Under FSDP each rank holds shards: gathering the full state dict is a collective, so every rank calls it.
    full_state = accelerator.get_state_dict(model) if is_fsdp(accelerator) else None
    if accelerator.is_main_process:
        layout = precision_layout(accelerator.unwrap_model(model), accelerator.mixed_precision)
        save_trained(accelerator.unwrap_model(model), processor, out, cfg.model_id, full_state,
                     lambda stage: write_run_config(cfg, stage, n_steps, losses, counts, builder,
                                                    accelerator, layout, throughput, speed, family.name))
    logger.close(encoder.stats(), n_steps, accelerator.unwrap_model(model))  # with a final probe
    results = None
    if cfg.final_eval:
        accelerator.wait_for_everyone()  # the main process has published the saved model the evaluation names
        if is_fsdp(accelerator):
            # A sharded model cannot answer on one rank alone (every forward gathers from all ranks, and answers
            # differ in length): each rank drops its shards and loads the saved model whole, as `eval` would.
            del model, optimizer, scheduler, full_state, autocast_adapters, encoder, features
            accelerator.free_memory()
            results = final_evaluation(cfg, root, None, None, out)
        else:
            results = final_evaluation(cfg, root, accelerator.unwrap_model(model), processor, out)
    return TrainResult(out, n_steps, losses, counts, results, final_eval_folder(cfg, out) if cfg.final_eval else None)


def resume(cfg: TrainConfig, out: Path, accelerator, n_steps: int) -> tuple[list[dict], int]:
    """Restore the checkpoint ``--resume_from_checkpoint`` names; its log history and step (none: ``[], 0``)."""
    checkpoint = resolve_resume(cfg.resume_from_checkpoint, out)
    if checkpoint is None:
        return [], 0
    state = read_trainer_state(checkpoint)
    start = state["global_step"]
    if start > n_steps:  # max_steps/num_epochs may grow between reruns (not fingerprinted), never shrink
        raise UserError(f"{checkpoint}: this run already took {start} optimiser steps, more than the {n_steps} asked "
                        "for; ask for at least as many (--max_steps/--num_epochs), or pass --overwrite")
    load_checkpoint(accelerator, checkpoint)
    writers = written_by(checkpoint)
    if writers != accelerator.num_processes:  # its generators were other processes'
        from accelerate.utils import set_seed

        set_seed(elastic_seed(cfg.seed, start, accelerator.process_index))
    log.info("resumed from %s (written by %d process(es)) at step %d of %d on %d", checkpoint, writers,
             start, n_steps, accelerator.num_processes)
    return state["log_history"], start


def log_entry(step: int, per_epoch: int, loss: float, lr: float, grad_norm) -> dict:
    """One step of ``trainer_state.json``'s log history, in Hugging Face Trainer's keys."""
    entry = {"step": step, "epoch": round(step / per_epoch, 4), "loss": loss, "learning_rate": lr}
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    return entry


def write_state(cfg: TrainConfig, folder: Path, history: list[dict], n_steps: int) -> None:
    write_trainer_state(folder, history[-1]["step"], n_steps, history, logging_steps=cfg.logging_steps,
                        eval_steps=cfg.eval_steps, save_steps=cfg.save_steps, train_batch_size=cfg.batch_size,
                        num_train_epochs=cfg.num_epochs)


def uses_feature_cache(cfg: TrainConfig, accelerator, family) -> bool:
    """Cached vision features need a frozen tower and a family that declares them (LLaVA's fixed features);
    under FSDP the tower is sharded and runs inside the forward."""
    return (cfg.cache_image_features and cfg.freeze_vision_tower and family.fast.feature_cache
            and not is_fsdp(accelerator))


def check_family_supports(cfg: TrainConfig, family) -> None:
    """Refuse settings the family's fast paths do not carry yet, in one line (packing falls back silently:
    it changes speed, not the mathematics)."""
    if cfg.closed_train_objective != "sft" and not family.fast.packing:
        raise UserError(f"--closed_train_objective {cfg.closed_train_objective} scores candidates as packed "
                        f"segments, which the {family.name} family does not support yet; use sft")


def image_group_ids(samples: list, builder: InputBuilder) -> list[int]:
    """A group id per sample: samples with the same pixels (the same image) share one."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault(builder.pixel_key(s), len(ids)) for s in samples]


def mc_weight(cfg: TrainConfig) -> float:
    """``mc``: the choice loss replaces the answer loss of CLOSED rows (weight 1); ``hybrid``: it is added."""
    return 1.0 if cfg.closed_train_objective == "mc" else cfg.closed_mc_weight


def final_eval_folder(cfg: TrainConfig, out: Path) -> Path:
    """Where the final evaluation writes: ``OUTPUT_DIR/eval_<split>``."""
    return out / f"eval_{cfg.final_eval_split}"


def final_evaluation(cfg: TrainConfig, root: Path, model, processor, out: Path) -> dict | None:
    """The evaluation engine on ``final_eval_split`` with the in-memory model and the training's prompt settings."""
    from slakevqa.evaluation.config import EvalConfig
    from slakevqa.evaluation.evaluate import evaluate

    data = replace(cfg.data, data_source="local", slake_root=str(root))  # the folder training read
    eval_cfg = EvalConfig(model_id_or_ckpt=str(out), data=data,
                          split=cfg.final_eval_split, output_dir=str(final_eval_folder(cfg, out)),
                          inputs=cfg.inputs, attention=cfg.attention, seed=cfg.seed, limit=DRY_RUN_RECORDS if cfg.dry_run else 0)
    return evaluate(eval_cfg, model, processor, replace_changed=True)  # a longer run's model: answered afresh


def fused_adamw_supported(device) -> bool:
    """Fused AdamW (one kernel for all parameters): ~15-55% faster steps for small models; CPU and CUDA."""
    return device.type in ("cpu", "cuda")


def load_for_training(cfg: TrainConfig, device):
    from slakevqa.models.loading import load_model

    if cfg.qlora and device.type != "cuda":
        raise UserError("--qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on CPU use --use_lora without it")
    loaded = load_model(cfg.model_id, device=str(device), dtype=weight_dtype(cfg.precision, device.type),
                        trust_remote_code=cfg.trust_remote_code, load_in_4bit=cfg.qlora, log=log.info)
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        # fp32 norms and input gradients so LoRA on 4-bit layers trains stably (the QLoRA recipe)
        loaded.model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    log.info("loaded %s", loaded.describe())
    return loaded.model, loaded.processor
