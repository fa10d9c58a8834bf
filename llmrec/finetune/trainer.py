"""QLoRA instruction tuning of the listwise reranker with trl's ``SFTTrainer``.

``finetune(config, train_dataset, eval_fn)`` reads top to bottom: load the base model
(bitsandbytes 4-bit NF4 + double quant by default) -> LoRA (or a given adapter, trainable)
-> tokenize prompt + label (loss on the label token only) -> train with checkpoints every
``save_steps`` (``resume=True`` continues from the last complete one) and, with an
``eval_fn``, validation NDCG@10 every ``eval_steps`` through the real reranker path,
keeping the best checkpoint and stopping early -> write ``adapter/`` atomically and
``manifest.json`` (-> ``merged/`` when asked). The model is prepared by
:mod:`~llmrec.finetune.model`, the run folder's outputs are :mod:`~llmrec.finetune.artifacts`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from llmrec.errors import ConfigError, LlmrecError
from llmrec.finetune.artifacts import (
    RUN_CONFIG,
    describe_data,
    merge_adapter,
    run_record,
    training_metrics,
    write_manifest,
)
from llmrec.finetune.backend import InTrainingBackend
from llmrec.finetune.config import METRIC, FinetuneConfig
from llmrec.finetune.model import attach_adapter, load_base_model
from llmrec.io import atomic_dir, atomic_write_json
from llmrec.llm.backend import ScoringBackend, label_token_ids
from llmrec.llm.models import check_adapter_folder, load_tokenizer, pick_device, resolve_dtype, resolve_model
from llmrec.llm.prompting import PromptTemplate

logger = logging.getLogger(__name__)

EvalFn = Callable[[ScoringBackend], dict[str, float]]
"""Validation metric: takes a scoring backend, returns e.g. ``{"ndcg@10": 0.31, ...}``
(:class:`~llmrec.finetune.evaluation.RankingEvaluator` is one)."""

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"

__all__ = ["FinetuneConfig", "check_inputs", "finetune", "last_checkpoint", "tokenize_examples"]


@dataclass
class RunStart:
    """What :func:`check_inputs` found: the template, the checkpoint to resume from, and the
    record for ``run_config.json``."""

    template: PromptTemplate
    resume_from: Path | None
    record: dict[str, Any]


def check_inputs(config: FinetuneConfig) -> RunStart:
    """Check what can be checked in a moment, before the data and the model load: the template,
    the starting adapter folder, and the run folder (checkpoints without ``resume``; on
    ``resume``, settings that differ from its ``run_config.json``)."""
    template = PromptTemplate.load(config.template)
    if config.adapter:
        check_adapter_folder(config.adapter)
    out = Path(config.output_dir)
    found = last_checkpoint(out / CHECKPOINTS)
    if not config.resume and found is not None:
        raise LlmrecError(
            f"{out / CHECKPOINTS} already holds checkpoints: pass resume=True (--resume) to continue "
            "that run, or choose another output_dir"
        )
    resume_from = found if config.resume else None
    return RunStart(template, resume_from, run_record(out, config, resuming=resume_from is not None))


# --- data ------------------------------------------------------------------------------------


def tokenize_examples(dataset: Dataset, tokenizer: Any, label_ids: dict[str, int]) -> Dataset:
    """``input_ids`` = prompt tokens + the label's token, ``completion_mask`` = 1 on the label only.

    The prompt is tokenized exactly as the reranker does at inference (no special tokens
    added; the chat format is already in the text) and the label is the single token the
    verbalizer scores, so training and scoring see the same sequence. No EOS is appended:
    the loss is on the label token alone.
    """
    for column in ("prompt", "completion"):
        if column not in dataset.column_names:
            raise ConfigError(
                "the training dataset needs 'prompt' and 'completion' columns (build_examples)",
                parameter="train_dataset",
                value=dataset.column_names,
            )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
        ids, masks = [], []
        for prompt, label in zip(prompts, batch["completion"]):
            if label not in label_ids:
                raise ConfigError(
                    f"completion must be one of the template labels {sorted(label_ids)}",
                    parameter="completion",
                    value=label,
                )
            ids.append([*prompt, label_ids[label]])
            masks.append([0] * len(prompt) + [1])
        return {"input_ids": ids, "completion_mask": masks}

    # keep_in_memory: no cache files written next to a dataset loaded from disk.
    return dataset.map(
        encode, batched=True, remove_columns=dataset.column_names, keep_in_memory=True, desc="tokenize"
    )


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest *complete* ``checkpoint-N`` in ``folder`` (one a kill interrupted is skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and (path / "trainer_state.json").exists():
            found.append((int(step), path))
    return max(found)[1] if found else None


# --- trainer ---------------------------------------------------------------------------------


def _trainer_class() -> type:
    """SFTTrainer with llmrec's ranking evaluation and a label-only loss head (built lazily)."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class LlmrecSFTTrainer(SFTTrainer):
        def __init__(
            self,
            *args: Any,
            ranking_eval: EvalFn | None = None,
            scoring_tokenizer: Any = None,
            label_logits_only: bool = True,
            eval_batch_size: int = 8,
            label_softmax_ids: list[int] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            # trl casts the LoRA weights of a quantized model to bf16, but a resumed run gets
            # them back in fp32 (peft upcasts adapters on load), so a resumed run would train
            # differently from an uninterrupted one. Keep them in fp32 from the start (peft's
            # default; on GPU, bf16 autocast still does the compute); on CPUs without native
            # bf16 this is also the fast path.
            for param in self.model.parameters():
                if param.requires_grad and param.dtype != torch.float32:
                    param.data = param.data.float()
            self.ranking_eval = ranking_eval
            self.scoring_tokenizer = scoring_tokenizer
            self.label_logits_only = label_logits_only
            self.eval_batch_size = eval_batch_size
            self.label_softmax_ids = label_softmax_ids
            self.eval_seconds = 0.0

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            """Validation ranking through the reranker over the in-training model."""
            if self.ranking_eval is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            start = time.perf_counter()
            backend = InTrainingBackend(
                self.model, self.scoring_tokenizer, "in-training", self.eval_batch_size
            )
            raw = self.ranking_eval(backend)
            metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in raw.items()}
            self.eval_seconds += time.perf_counter() - start
            logger.info("step %d: validation %s", self.state.global_step, _brief(raw))
            Trainer.log(self, dict(metrics))  # not SFTTrainer.log: it would fold train metrics in
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """Cross-entropy of the label tokens, projecting only their positions through the LM head."""
            if not self.label_logits_only or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            loss, picked, targets = label_loss(model, inputs, num_items_in_batch, self.label_softmax_ids)
            with torch.no_grad():
                self._metrics[mode]["label_accuracy"].append(
                    (picked.argmax(-1) == targets).float().mean().item()
                )
                if mode == "train" and "attention_mask" in inputs:
                    self._total_train_tokens += int(inputs["attention_mask"].sum().item())
                    self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return LlmrecSFTTrainer


def label_loss(
    model: Any, inputs: dict[str, Any], num_items: int | None = None, label_ids: list[int] | None = None
) -> tuple[Any, Any, Any]:
    """Cross-entropy of the label tokens, projecting only their positions through the LM head:
    (loss, the logits it is computed from, the targets). ``inputs["labels"]`` is -100
    everywhere but on the label tokens (trl's completion-only collator). With ``label_ids``
    (the template's label tokens) the softmax runs over those tokens only, as the reranker
    reads them at inference; the targets are then positions in ``label_ids``."""
    import torch

    labels = inputs["labels"][:, 1:]
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    keep = torch.unique(cols)  # sorted positions whose hidden state predicts a label
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, use_cache=False, logits_to_keep=keep).logits
    picked = logits[rows, torch.searchsorted(keep, cols)].float()
    targets = labels[rows, cols]
    if label_ids is not None:
        ids = torch.as_tensor(label_ids, device=picked.device)
        picked = picked[:, ids]
        targets = (targets[:, None] == ids[None, :]).int().argmax(1)
    nll = torch.nn.functional.cross_entropy(picked, targets, reduction="sum")
    denom = num_items if num_items is not None else max(len(targets), 1)
    return nll / denom, picked, targets


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in ("ndcg@10", "recall@10", "retriever_ndcg@10") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


# --- entry point -----------------------------------------------------------------------------


def finetune(config: FinetuneConfig, train_dataset: Dataset, eval_fn: EvalFn | None = None) -> Path:
    """Tune ``config.model`` on ``train_dataset`` (prompt/completion text, or already tokenized
    ``input_ids``/``completion_mask`` as :func:`~llmrec.finetune.histories.history_dataset`
    builds); return the adapter folder.

    ``eval_fn`` (e.g. a :class:`~llmrec.finetune.evaluation.RankingEvaluator`) is called with a
    scoring backend over the in-training model every ``config.eval_steps`` steps; the best
    checkpoint by NDCG@10 is kept and loaded at the end, and training stops after
    ``config.early_stopping_patience`` evaluations without improvement. Without
    ``eval_steps`` it runs once after training, for the manifest.
    """
    start = check_inputs(config)  # before torch is even imported
    import torch

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _finetune(config, start, train_dataset, eval_fn)
    finally:
        torch.set_num_threads(previous_threads)


def _finetune(
    config: FinetuneConfig, start: RunStart, train_dataset: Dataset, eval_fn: EvalFn | None
) -> Path:
    import torch
    from transformers import EarlyStoppingCallback

    started = time.perf_counter()
    template, resume_from = start.template, start.resume_from
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = out / CHECKPOINTS
    if config.resume and resume_from is None:
        logger.warning("resume: no complete checkpoint in %s, starting from scratch", checkpoint_dir)
    if config.eval_steps is not None and eval_fn is None:
        logger.warning("eval_steps=%s but no eval_fn: no in-training evaluation", config.eval_steps)
    atomic_write_json(out / RUN_CONFIG, start.record)  # what the checkpoints are trained with

    model_path = resolve_model(config.model)
    device = pick_device(config.device)
    dtype_name = resolve_dtype(config.dtype, device)
    dtype = getattr(torch, dtype_name)
    tokenizer = load_tokenizer(model_path)
    label_ids = dict(zip(template.labels, label_token_ids(tokenizer, template.labels)))
    # The history task's dataset comes tokenized (llmrec.finetune.histories); ranking examples
    # are prompt/completion text.
    pretokenized = "input_ids" in train_dataset.column_names
    tokenized = train_dataset if pretokenized else tokenize_examples(train_dataset, tokenizer, label_ids)

    model = attach_adapter(load_base_model(config, model_path, device, dtype), config, device)
    model.print_trainable_parameters()
    evaluate = eval_fn is not None and config.eval_steps is not None
    args = config.to_sft_config(
        checkpoint_dir, use_cpu=device == "cpu", bf16=dtype_name == "bfloat16", evaluate=evaluate
    )
    callbacks = []
    if evaluate and config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=tokenized,
        # Trainer insists on an eval dataset when evaluating; the ranking evaluation replaces
        # its loss loop, so one example stands in and is never read.
        eval_dataset=tokenized.select(range(1)) if evaluate else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        ranking_eval=eval_fn if evaluate else None,
        scoring_tokenizer=tokenizer,
        label_logits_only=config.label_logits_only,
        eval_batch_size=config.batch_size,
        label_softmax_ids=list(label_ids.values()) if config.loss == "labels" else None,
    )
    start_step, start_tokens = _resume_point(resume_from)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = training_metrics(trainer, output, start_step, start_tokens)

    adapter_dir = out / ADAPTER
    with atomic_dir(adapter_dir, marker="adapter_config.json") as tmp:
        trainer.model.save_pretrained(tmp)
    final_eval = None
    if eval_fn is not None and not (evaluate and trainer.state.best_metric is not None):
        final_eval = eval_fn(InTrainingBackend(trainer.model, tokenizer, config.model, config.batch_size))
        metrics[f"best_{METRIC}"] = final_eval.get(METRIC)
    metrics["final_eval"] = final_eval
    train_seconds = time.perf_counter() - started
    write_manifest(
        out,
        config,
        template,
        base_model_path=model_path,
        device=device,
        dtype=dtype_name,
        data=describe_data(train_dataset, tokenized, config),
        metrics=metrics,
        resumed_from=resume_from,
        train_seconds=train_seconds,
        run_config=start.record,
    )
    if config.merge:
        merge_adapter(model_path, adapter_dir, out / MERGED)
    logger.info(
        "adapter written to %s (%d steps, %.1f s; %s s/step, %s tokens/s)",
        adapter_dir,
        trainer.state.global_step,
        train_seconds,
        metrics["seconds_per_step"],
        metrics["tokens_per_second"],
    )
    return adapter_dir


def _resume_point(checkpoint: Path | None) -> tuple[int, int]:
    if checkpoint is None:
        return 0, 0
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0)), int(state.get("num_input_tokens_seen", 0))
