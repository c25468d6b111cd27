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

from transformers import Trainer

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.entry import run_once
from kubetrain.trainer.lora.data import Records, require_enough, split
from kubetrain.trainer.lora.train import adapted_base, fit, runtime_callback, training_arguments
from kubetrain.trainer.multimodal.features import Collator, Conversations, prepare
from kubetrain.trainer.multimodal.model import language_targets, load_base, vlm_shape
from kubetrain.trainer.multimodal.options import MultimodalOptions, preflight
from kubetrain.trainer.runtime import Outcome
from kubetrain.trainer.session import TrainingSession

log = logging.getLogger(__name__)


def run(
    env: RuntimeEnv,
    spec: TrainingJobSpec,
    options: MultimodalOptions | None = None,
    records: Records | None = None,
) -> Outcome:
    """Train (or resume) the job's vision-language model; returns how the run ended."""
    checked = options or MultimodalOptions.from_env()
    data = records or preflight(env, spec)
    session = TrainingSession(env, spec)
    return run_once(
        session,
        lambda resume: _train(spec, checked, session, data, resume=resume.path if resume else None),
    )


def _train(
    spec: TrainingJobSpec,
    options: MultimodalOptions,
    session: TrainingSession,
    records: Records,
    *,
    resume: os.PathLike[str] | None,
) -> Outcome:
    llm = spec.llm
    assert llm is not None, "preflight checked spec.llm"
    base = adapted_base(
        spec, session.env, load_base, attention=options.attention, default_targets=language_targets
    )
    processor = base.processing
    prepared = prepare(records.items, processor, llm.max_seq_length)
    if prepared.skipped:
        log.warning("%s (of %d records)", prepared.note(), len(records.items))
    require_enough(len(prepared.records), records.source, prepared.note())
    train_records, eval_records = split(
        prepared.records, options.validation_fraction, spec.training.seed
    )
    args = training_arguments(
        spec,
        session,
        bf16=base.precision.bf16,
        fp16=base.precision.fp16,
        cuda=base.cuda,
        packing=False,
        evaluate=bool(eval_records),
    )
    callback = runtime_callback(
        session,
        shape=vlm_shape(base.model),
        context=prepared.mean_length,
        peak_tflops=options.peak_tflops,
        cuda=base.cuda,
    )
    tokenizer = getattr(processor, "tokenizer")  # noqa: B009 - load_base checked it is there
    trainer = Trainer(
        model=base.model,
        args=args,
        train_dataset=Conversations(train_records, processor, llm.max_seq_length),
        eval_dataset=Conversations(eval_records, processor, llm.max_seq_length)
        if eval_records
        else None,
        data_collator=Collator(int(tokenizer.pad_token_id)),
        processing_class=processor,
        callbacks=[callback],
    )
    return fit(
        trainer,
        callback,
        session,
        processor,
        resume=resume,
        merge=options.merge_adapter,
        samples_rate=True,
    )
