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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
import transformers
from torch import nn
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProcessorMixin,
    Trainer,
    TrainingArguments,
)

from kubetrain.api import LLMConfig, Strategy, TrainingJobSpec
from kubetrain.api.report import ReportedModel
from kubetrain.trainer import outputs
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.entry import run_once
from kubetrain.trainer.hf_callback import RuntimeCallback
from kubetrain.trainer.lora.data import Example, Records, require_enough, split, tokenize
from kubetrain.trainer.lora.model import (
    Precision,
    add_adapters,
    load_base,
    model_shape,
    settle_precision,
)
from kubetrain.trainer.lora.options import LoraOptions, preflight
from kubetrain.trainer.metrics import ModelShape, peak_flops
from kubetrain.trainer.runtime import Outcome
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
    checked = options or LoraOptions.from_env()
    data = records or preflight(env, spec)
    session = TrainingSession(env, spec)
    return run_once(
        session,
        lambda resume: _train(spec, checked, session, data, resume=resume.path if resume else None),
    )


def _train(
    spec: TrainingJobSpec,
    options: LoraOptions,
    session: TrainingSession,
    records: Records,
    *,
    resume: os.PathLike[str] | None,
) -> Outcome:
    llm = spec.llm
    assert llm is not None, "preflight checked spec.llm"
    base = adapted_base(spec, session.env, load_base, attention=options.attention)
    tokenizer = base.processing
    examples = tokenize(records.items, tokenizer, llm.max_seq_length)
    lost = len(records.items) - len(examples)
    require_enough(
        len(examples),
        records.source,
        f"{lost} samples have no target tokens within spec.llm.maxSeqLength {llm.max_seq_length}"
        if lost
        else "",
    )
    train_set, eval_set = split(examples, options.validation_fraction, spec.training.seed)
    args = training_arguments(
        spec,
        session,
        bf16=base.precision.bf16,
        fp16=base.precision.fp16,
        cuda=base.cuda,
        packing=options.packing,
        evaluate=bool(eval_set),
    )
    callback = runtime_callback(
        session,
        shape=model_shape(base.model),
        context=_mean_length(train_set),
        peak_tflops=options.peak_tflops,
        cuda=base.cuda,
    )
    trainer = Trainer(
        model=base.model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=collator(tokenizer, options.packing),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    return fit(trainer, callback, session, tokenizer, resume=resume, merge=options.merge_adapter)


Processing = TypeVar("Processing", PreTrainedTokenizerBase, ProcessorMixin)
"""What turns a sample into model inputs, saved beside the model: a tokenizer or a processor."""
Loaded_co = TypeVar("Loaded_co", PreTrainedTokenizerBase, ProcessorMixin, covariant=True)


class BaseLoader(Protocol[Loaded_co]):
    """A trainer's ``load_base``: the base model and its tokenizer or processor."""

    def __call__(
        self,
        llm: LLMConfig,
        precision: Precision,
        *,
        seed: int,
        cuda: bool,
        attention: str,
        fetched: Path | None,
    ) -> tuple[PreTrainedModel, Loaded_co]: ...


@dataclass(frozen=True)
class AdaptedBase(Generic[Processing]):
    """The model to train (adapters on, or the whole base for full fine-tuning), its tokenizer
    or processor, and the precision settled for this device."""

    model: nn.Module
    processing: Processing
    precision: Precision
    cuda: bool


def adapted_base(
    spec: TrainingJobSpec,
    env: RuntimeEnv,
    load: BaseLoader[Processing],
    *,
    attention: str,
    default_targets: Callable[[PreTrainedModel], str | list[str] | None] = lambda _: None,
) -> AdaptedBase[Processing]:
    """Settle the precision, load the base (seeded; the fetched copy when there is one) and
    add the adapters: on spec.llm.lora.targetModules, else on ``default_targets(base)``."""
    llm = spec.llm
    assert llm is not None, "preflight checked spec.llm"
    transformers.logging.set_verbosity_warning()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.is_available()
    precision = settle_precision(spec.optimization.mixed_precision.value, llm.strategy, cuda)
    seed = spec.training.seed
    transformers.set_seed(seed)
    base, processing = load(
        llm, precision, seed=seed, cuda=cuda, attention=attention, fetched=env.base_model_path
    )
    transformers.set_seed(seed)
    model = add_adapters(
        base,
        llm,
        gradient_checkpointing=spec.optimization.gradient_checkpointing,
        default_targets=default_targets(base),
    )
    return AdaptedBase(model, processing, precision, cuda)


def runtime_callback(
    session: TrainingSession,
    *,
    shape: ModelShape,
    context: float,
    peak_tflops: float | None,
    cuda: bool,
) -> RuntimeCallback:
    """The callback through which the runtime sees the Trainer: progress, throughput and MFU
    (against this device's peak), checkpoints and stop."""
    training = session.spec.training
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    return RuntimeCallback(
        session,
        shape=shape,
        context=context,
        peak_flops=peak_flops(device_name, peak_tflops),
        samples_per_step=training.batch_size
        * training.gradient_accumulation_steps
        * session.env.distributed.world_size,
    )


def fit(
    trainer: Trainer,
    callback: RuntimeCallback,
    session: TrainingSession,
    processing: PreTrainedTokenizerBase | ProcessorMixin,
    *,
    resume: os.PathLike[str] | None,
    merge: bool,
    samples_rate: bool = False,
) -> Outcome:
    """Train (from ``resume``), then publish the model with ``processing`` beside it and finish
    the session; a stop asked for before or during training ends resumable instead."""
    trainer.remove_callback(PrinterCallback)  # the runtime logs progress, rate-limited
    if any_rank(session.should_stop(), trainer.args.device):
        message = "stopped before training began; resumable" + (
            f" from {os.fspath(resume)}" if resume else ""
        )
        return session.finish("stopping", message)

    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=os.fspath(resume) if resume else None)
    elapsed = time.monotonic() - started
    if callback.stopping:
        latest = session.checkpoints[-1].id if session.checkpoints else "none"
        message = (
            f"stopped at step {trainer.state.global_step} after checkpoint {latest}; resumable"
        )
        return session.finish("stopping", message)

    summary = training_summary(
        trainer,
        session,
        result.training_loss,
        elapsed,
        callback.early_stopped,
        samples_rate=samples_rate,
    )
    llm = session.spec.llm
    assert llm is not None, "preflight checked spec.llm"
    model_ref = publish(
        trainer, processing, llm.strategy, session.env.output_dir, merge=merge, summary=summary
    )
    session.update(step=trainer.state.global_step, epoch=float(trainer.state.epoch or 0.0))
    message = f"{summary}; model in {model_ref.path}" if model_ref else summary
    return session.finish("completed", message, model_ref)


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


def publish(
    trainer: Trainer,
    processing: PreTrainedTokenizerBase | ProcessorMixin,
    strategy: Strategy,
    output_dir: Path,
    *,
    merge: bool,
    summary: str,
) -> ReportedModel | None:
    """Rank 0 writes the adapter (and, if asked, the merged model) or the whole model, each
    with its tokenizer or processor beside it, and publishes them."""
    model_ref: ReportedModel | None = None
    if trainer.is_world_process_zero():
        staged = outputs.staging_dir(output_dir)
        model: PreTrainedModel = trainer.accelerator.unwrap_model(trainer.model)
        if strategy is Strategy.FULL:
            fmt = "safetensors"
            model.save_pretrained(staged / "model", safe_serialization=True)
            processing.save_pretrained(staged / "model")
        else:
            fmt = "peft-lora"
            model.save_pretrained(staged / "adapter", safe_serialization=True)
            processing.save_pretrained(staged / "adapter")
            if merge and strategy is Strategy.LORA:
                fmt = "peft-lora+merged"
                merged = model.merge_and_unload()  # type: ignore[operator]
                merged.save_pretrained(staged / "merged", safe_serialization=True)
                processing.save_pretrained(staged / "merged")
            elif merge:
                log.warning(
                    "not merging a QLoRA adapter into a 4-bit base model; the adapter is saved"
                )
        model_ref = outputs.publish(staged, output_dir, format=fmt, summary={"summary": summary})
    trainer.accelerator.wait_for_everyone()
    return model_ref


def training_summary(
    trainer: Trainer,
    session: TrainingSession,
    train_loss: float,
    elapsed: float,
    early: bool,
    *,
    samples_rate: bool = False,
) -> str:
    """The completed run in a line: steps, epochs, time, losses and throughput (tokens/s, and
    samples/s when ``samples_rate``, for samples whose cost tokens do not tell)."""
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
    if samples_rate and (samples := session.metrics.get("samplesPerSecond")) is not None:
        parts.append(f"{samples:.1f} samples/s")
    if session.throughput:
        parts.append(f"{session.throughput:.0f} tokens/s")
    return ", ".join(parts)


def _mean_length(examples: list[Example]) -> float:
    return sum(len(e["input_ids"]) for e in examples) / max(len(examples), 1)
