"""The multimodal trainer: a transformers ``Trainer`` on a vision-language model, driven by the
runtime exactly as the LoRA trainer is.

One process per GPU (DDP under torchrun or the runtime's launcher; gloo on CPU). Records
are encoded once up front (to leave out those that cannot fit), then again batch by batch,
so images are never all held in memory. Resume restores the adapter (or the whole model),
optimizer, scheduler, RNG states and data position from the checkpoint, so the run
continues as if never interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel, PrinterCallback, ProcessorMixin, Trainer

from kubetrain.api import Strategy, TrainingJobSpec
from kubetrain.api.report import ReportedModel
from kubetrain.trainer import outputs
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.hf_callback import RuntimeCallback
from kubetrain.trainer.lora.data import Records, require_enough, split
from kubetrain.trainer.lora.model import add_adapters, settle_precision
from kubetrain.trainer.lora.train import training_arguments
from kubetrain.trainer.metrics import peak_flops
from kubetrain.trainer.multimodal.features import Collator, Conversations, prepare
from kubetrain.trainer.multimodal.model import language_targets, load_base, vlm_shape
from kubetrain.trainer.multimodal.options import MultimodalOptions, preflight
from kubetrain.trainer.runtime import Outcome, TrainerError
from kubetrain.trainer.session import TrainingSession
from kubetrain.trainer.signals import any_rank

log = logging.getLogger(__name__)


def run(
    env: RuntimeEnv,
    spec: TrainingJobSpec,
    options: MultimodalOptions | None = None,
    records: Records | None = None,
) -> Outcome:
    """Train (or resume) the job's vision-language model; returns how the run ended."""
    options = options or MultimodalOptions.from_env()
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
    options: MultimodalOptions,
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
    base, processor = load_base(
        llm,
        precision,
        seed=seed,
        cuda=cuda,
        attention=options.attention,
        fetched=env.base_model_path,
    )
    transformers.set_seed(seed)
    model = add_adapters(
        base,
        llm,
        gradient_checkpointing=spec.optimization.gradient_checkpointing,
        default_targets=language_targets(base),
    )

    prepared = prepare(records.items, processor, llm.max_seq_length)
    if prepared.skipped:
        log.warning("%s (of %d records)", prepared.note(), len(records.items))
    require_enough(len(prepared.records), records.source, prepared.note())
    train_records, eval_records = split(prepared.records, options.validation_fraction, seed)
    args = training_arguments(
        spec,
        session,
        bf16=precision.bf16,
        fp16=precision.fp16,
        cuda=cuda,
        packing=False,
        evaluate=bool(eval_records),
    )
    world = env.distributed.world_size
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    callback = RuntimeCallback(
        session,
        shape=vlm_shape(model),
        context=prepared.mean_length,
        peak_flops=peak_flops(device_name, options.peak_tflops),
        samples_per_step=spec.training.batch_size
        * spec.training.gradient_accumulation_steps
        * world,
    )
    tokenizer = getattr(processor, "tokenizer")  # noqa: B009 - load_base checked it is there
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Conversations(train_records, processor, llm.max_seq_length),
        eval_dataset=Conversations(eval_records, processor, llm.max_seq_length)
        if eval_records
        else None,
        data_collator=Collator(int(tokenizer.pad_token_id)),
        processing_class=processor,
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
        processor,
        llm.strategy,
        env.output_dir,
        merge=options.merge_adapter,
        summary=summary,
    )
    session.update(step=trainer.state.global_step, epoch=float(trainer.state.epoch or 0.0))
    message = f"{summary}; model in {model_ref.path}" if model_ref else summary
    session.finish("completed", message, model_ref)
    return Outcome.completed(message)


def _publish(
    trainer: Trainer,
    processor: ProcessorMixin,
    strategy: Strategy,
    output_dir: Path,
    *,
    merge: bool,
    summary: str,
) -> ReportedModel | None:
    """Rank 0 writes the adapter (and, if asked, the merged model) or the whole model, each
    with the processor beside it, and publishes them."""
    model_ref: ReportedModel | None = None
    if trainer.is_world_process_zero():
        staged = outputs.staging_dir(output_dir)
        model: PreTrainedModel = trainer.accelerator.unwrap_model(trainer.model)
        if strategy is Strategy.FULL:
            fmt = "safetensors"
            model.save_pretrained(staged / "model", safe_serialization=True)
            processor.save_pretrained(staged / "model")
        else:
            fmt = "peft-lora"
            model.save_pretrained(staged / "adapter", safe_serialization=True)
            processor.save_pretrained(staged / "adapter")
            if merge and strategy is Strategy.LORA:
                fmt = "peft-lora+merged"
                merged = model.merge_and_unload()  # type: ignore[operator]
                merged.save_pretrained(staged / "merged", safe_serialization=True)
                processor.save_pretrained(staged / "merged")
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
    if (samples := session.metrics.get("samplesPerSecond")) is not None:
        parts.append(f"{samples:.1f} samples/s")
    if session.throughput:
        parts.append(f"{session.throughput:.0f} tokens/s")
    return ", ".join(parts)
