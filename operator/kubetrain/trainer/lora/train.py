"""The LoRA trainer: a transformers ``Trainer`` with peft adapters, driven by the runtime.

One process per GPU (DDP under torchrun or the runtime's launcher; gloo on CPU). Data is
tokenised once; with packing, each batch is flattened into one padding-free row whose
position ids restart per sample, which SDPA and flash attention turn into per-sample
causal masks. Resume restores the adapter, optimizer, scheduler, RNG states and data
position from the checkpoint, so the run continues as if never interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from kubetrain.api import Strategy, TrainingJobSpec
from kubetrain.api.report import ReportedModel
from kubetrain.trainer import outputs
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.hf_callback import RuntimeCallback
from kubetrain.trainer.lora.data import Example, Records, require_enough, split, tokenize
from kubetrain.trainer.lora.model import (
    add_adapters,
    load_base,
    model_shape,
    settle_precision,
)
from kubetrain.trainer.lora.options import LoraOptions, preflight
from kubetrain.trainer.metrics import peak_flops
from kubetrain.trainer.runtime import Outcome, TrainerError
from kubetrain.trainer.session import TrainingSession
from kubetrain.trainer.signals import any_rank

log = logging.getLogger(__name__)


def run(
    env: RuntimeEnv,
    spec: TrainingJobSpec,
    options: LoraOptions | None = None,
    records: Records | None = None,
) -> Outcome:
    """Train (or resume) the job's adapter; returns how the run ended."""
    options = options or LoraOptions.from_env()
    records = records or preflight(env, spec)
    session = TrainingSession(env, spec)
    done = outputs.published(env.output_dir) if not env.resume_from else None
    if done is not None:
        model, manifest = done
        message = f"already completed: {manifest.get('summary', 'model')} in {model.path}"
        session.finish("completed", message, model)
        return Outcome.completed(message)
    try:
        resume = session.begin()
        outcome = _train(spec, options, session, records, resume=resume.path if resume else None)
    except BaseException as err:
        reason = str(err) if isinstance(err, TrainerError) else f"{type(err).__name__}: {err}"
        session.finish("failed", reason[:1024])
        raise
    return outcome


def _train(
    spec: TrainingJobSpec,
    options: LoraOptions,
    session: TrainingSession,
    records: Records,
    *,
    resume: os.PathLike[str] | None,
) -> Outcome:
    env = session.env
    llm = spec.llm
    assert llm is not None, "preflight checked spec.llm"
    transformers.logging.set_verbosity_warning()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.is_available()
    precision = settle_precision(spec.optimization.mixed_precision.value, llm.strategy, cuda)
    seed = spec.training.seed
    transformers.set_seed(seed)
    base, tokenizer = load_base(
        llm,
        precision,
        seed=seed,
        cuda=cuda,
        attention=options.attention,
        fetched=session.env.base_model_path,
    )
    transformers.set_seed(seed)
    model = add_adapters(base, llm, gradient_checkpointing=spec.optimization.gradient_checkpointing)

    examples = tokenize(records.items, tokenizer, llm.max_seq_length)
    lost = len(records.items) - len(examples)
    require_enough(
        len(examples),
        records.source,
        f"{lost} samples have no target tokens within spec.llm.maxSeqLength {llm.max_seq_length}"
        if lost
        else "",
    )
    train_set, eval_set = split(examples, options.validation_fraction, seed)
    args = training_arguments(
        spec,
        session,
        bf16=precision.bf16,
        fp16=precision.fp16,
        cuda=cuda,
        packing=options.packing,
        evaluate=bool(eval_set),
    )
    world = env.distributed.world_size
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    callback = RuntimeCallback(
        session,
        shape=model_shape(model),
        context=_mean_length(train_set),
        peak_flops=peak_flops(device_name, options.peak_tflops),
        samples_per_step=spec.training.batch_size
        * spec.training.gradient_accumulation_steps
        * world,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=collator(tokenizer, options.packing),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the runtime logs progress, rate-limited
    if any_rank(session.should_stop(), args.device):
        message = "stopped before training began; resumable" + (
            f" from {os.fspath(resume)}" if resume else ""
        )
        session.finish("stopping", message)
        return Outcome.stopped(message)

    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=os.fspath(resume) if resume else None)
    elapsed = time.monotonic() - started
    if callback.stopping:
        latest = session.checkpoints[-1].id if session.checkpoints else "none"
        message = (
            f"stopped at step {trainer.state.global_step} after checkpoint {latest}; resumable"
        )
        session.finish("stopping", message)
        return Outcome.stopped(message)

    summary = _summary(trainer, session, result.training_loss, elapsed, callback.early_stopped)
    model_ref = _publish(
        trainer,
        tokenizer,
        llm.strategy,
        env.output_dir,
        merge=options.merge_adapter,
        summary=summary,
    )
    session.update(step=trainer.state.global_step, epoch=float(trainer.state.epoch or 0.0))
    message = f"{summary}; model in {model_ref.path}" if model_ref else summary
    session.finish("completed", message, model_ref)
    return Outcome.completed(message)


def training_arguments(
    spec: TrainingJobSpec,
    session: TrainingSession,
    *,
    bf16: bool,
    fp16: bool,
    cuda: bool,
    packing: bool,
    evaluate: bool,
) -> TrainingArguments:
    """The Trainer's arguments from the spec; checkpoints and logging are the runtime's."""
    training, optimization = spec.training, spec.optimization
    checkpointing = optimization.gradient_checkpointing
    return TrainingArguments(
        output_dir=str(session.store.staging),
        num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=spec.effective_learning_rate() or 2e-4,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps,
        max_grad_norm=optimization.max_grad_norm,
        lr_scheduler_type="linear",
        seed=training.seed,
        data_seed=training.seed,
        bf16=bf16,
        fp16=fp16,
        **_checkpointing(checkpointing),
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",  # the runtime decides when (RuntimeCallback) and seals each one
        eval_strategy="epoch" if evaluate else "no",
        report_to="none",
        disable_tqdm=True,
        log_level="warning",
        remove_unused_columns=False,
        include_num_input_tokens_seen="all" if packing else "non_padding",
        ddp_find_unused_parameters=False,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
    )


def _checkpointing(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing, under the argument names of this transformers version."""
    fields = TrainingArguments.__dataclass_fields__
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    kwargs = {"use_reentrant": False} if enabled else None
    return {name: enabled, f"{name}_kwargs": kwargs}


def collator(tokenizer: PreTrainedTokenizerBase, packing: bool) -> Any:
    """Padding-free flattening when packing, else pad to the longest sample of the batch."""
    if packing:
        return DataCollatorWithFlattening(  # type: ignore[no-untyped-call]
            return_position_ids=True, separator_id=-100
        )
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def _publish(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    strategy: Strategy,
    output_dir: Path,
    *,
    merge: bool,
    summary: str,
) -> ReportedModel | None:
    """Rank 0 writes the adapter (and, if asked, the merged model) and publishes them."""
    model_ref: ReportedModel | None = None
    if trainer.is_world_process_zero():
        staged = outputs.staging_dir(output_dir)
        model: PreTrainedModel = trainer.accelerator.unwrap_model(trainer.model)
        if strategy is Strategy.FULL:
            fmt = "safetensors"
            model.save_pretrained(staged / "model", safe_serialization=True)
            tokenizer.save_pretrained(staged / "model")
        else:
            fmt = "peft-lora"
            model.save_pretrained(staged / "adapter", safe_serialization=True)
            tokenizer.save_pretrained(staged / "adapter")
            if merge and strategy is Strategy.LORA:
                fmt = "peft-lora+merged"
                merged = model.merge_and_unload()  # type: ignore[operator]
                merged.save_pretrained(staged / "merged", safe_serialization=True)
                tokenizer.save_pretrained(staged / "merged")
            elif merge:
                log.warning(
                    "not merging a QLoRA adapter into a 4-bit base model; the adapter is saved"
                )
        model_ref = outputs.publish(staged, output_dir, format=fmt, summary={"summary": summary})
    trainer.accelerator.wait_for_everyone()
    return model_ref


def _summary(
    trainer: Trainer, session: TrainingSession, train_loss: float, elapsed: float, early: bool
) -> str:
    state = trainer.state
    parts = [
        f"completed {state.global_step} steps ({float(state.epoch or 0):.2f} epochs"
        + (", stopped early" if early else "")
        + f") in {elapsed:.0f}s",
        f"last loss {session.loss:.4f}"
        if session.loss is not None
        else f"train loss {train_loss:.4f}",
    ]
    if session.eval_loss is not None:
        parts.append(f"eval loss {session.eval_loss:.4f}")
    if session.throughput:
        parts.append(f"{session.throughput:.0f} tokens/s")
    return ", ".join(parts)


def _mean_length(examples: list[Example]) -> float:
    return sum(len(e["input_ids"]) for e in examples) / max(len(examples), 1)
