"""QLoRA instruction tuning of the listwise reranker with trl's ``SFTTrainer``.

``finetune(config, train_dataset, eval_fn)`` reads top to bottom: load the base model
(bitsandbytes 4-bit NF4 + double quant by default) -> LoRA (or a given adapter, trainable)
-> tokenize prompt + label (loss on the label token only) -> train with checkpoints every
``save_steps`` (``resume=True`` continues from the last complete one) and, with an
``eval_fn``, validation NDCG@10 every ``eval_steps`` through the real reranker path,
keeping the best checkpoint and stopping early -> write ``adapter/`` atomically and
``manifest.json`` (-> ``merged/`` when asked).

Script use (what the kill-and-resume test runs)::

    python -m llmrec.finetune.trainer --config run.yaml --train-data examples_dir [--resume]

where ``examples_dir`` holds :func:`~llmrec.finetune.examples.build_examples`' dataset
saved with ``Dataset.save_to_disk``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from llmrec import __version__
from llmrec.errors import ConfigError, LlmrecError
from llmrec.finetune.backend import InTrainingBackend
from llmrec.finetune.config import METRIC, FinetuneConfig
from llmrec.io import atomic_dir, atomic_write_json
from llmrec.llm.backend import ScoringBackend, label_token_ids
from llmrec.llm.models import load_causal_lm, load_tokenizer, pick_device, resolve_dtype, resolve_model
from llmrec.llm.prompting import PromptTemplate

logger = logging.getLogger(__name__)

EvalFn = Callable[[ScoringBackend], dict[str, float]]
"""Validation metric: takes a scoring backend, returns e.g. ``{"ndcg@10": 0.31, ...}``
(:class:`~llmrec.finetune.evaluation.RankingEvaluator` is one)."""

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
MANIFEST = "manifest.json"

__all__ = ["FinetuneConfig", "finetune", "last_checkpoint", "tokenize_examples", "main"]


# --- model -----------------------------------------------------------------------------------


def disable_cpu_weight_repacking(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference (returns the count).

    On CPUs with AVX512-BF16 an eval-mode forward repacks the weights in place, after which
    training fails or silently gets no gradients (see ENVIRONMENT.md). Must run before any
    inference in a process that trains.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base_model(config: FinetuneConfig, path: str, device: str, dtype: Any) -> Any:
    """The base model, quantized as configured and prepared for k-bit training."""
    model = load_causal_lm(path, config.quantization, device, dtype)
    disable_cpu_weight_repacking(model)
    model.config.use_cache = False
    if config.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def attach_adapter(model: Any, config: FinetuneConfig, device: str) -> Any:
    """A fresh LoRA (initialized from ``config.seed``) or ``config.from_adapter``, trainable."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.from_adapter:
        return PeftModel.from_pretrained(model, config.from_adapter, is_trainable=True)
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):  # seed the LoRA init without touching global state
        torch.manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)


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
            labels = inputs["labels"][:, 1:]
            rows, cols = (labels != -100).nonzero(as_tuple=True)
            keep = torch.unique(cols)  # sorted positions whose hidden state predicts a label
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**model_inputs, use_cache=False, logits_to_keep=keep).logits
            picked = logits[rows, torch.searchsorted(keep, cols)].float()
            targets = labels[rows, cols]
            nll = torch.nn.functional.cross_entropy(picked, targets, reduction="sum")
            denom = num_items_in_batch if num_items_in_batch is not None else max(len(targets), 1)
            loss = nll / denom
            with torch.no_grad():
                self._metrics[mode]["label_accuracy"].append(
                    (picked.argmax(-1) == targets).float().mean().item()
                )
                if mode == "train" and "attention_mask" in inputs:
                    self._total_train_tokens += int(inputs["attention_mask"].sum().item())
                    self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return LlmrecSFTTrainer


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in ("ndcg@10", "recall@10", "retriever_ndcg@10") if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


# --- outputs ---------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"llmrec": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe_data(dataset: Dataset, tokenized: Dataset, config: FinetuneConfig) -> dict[str, Any]:
    """What the adapter was trained on, for the manifest."""
    lengths = np.array([len(x) for batch in tokenized.iter(batch_size=1024) for x in batch["input_ids"]])
    info: dict[str, Any] = {
        "description": config.dataset,
        "domain": config.domain,
        "examples": len(dataset),
        "n_candidates": config.n_candidates,
        "windows": config.windows,
        "hard_fraction": config.hard_fraction,
        "candidate_order": config.candidate_order,
        "train_users": config.train_users,
        "retriever": config.retriever,
        "max_prompt_tokens": config.max_prompt_tokens,
        "tokens_per_example": {"mean": float(lengths.mean()), "max": int(lengths.max())}
        if len(lengths)
        else {},
    }
    if "user" in dataset.column_names:
        info["users"] = len(set(dataset["user"]))
    if "completion" in dataset.column_names:
        counts: dict[str, int] = {}
        for label in dataset["completion"]:
            counts[label] = counts.get(label, 0) + 1
        info["label_counts"] = dict(sorted(counts.items()))
    return info


def _training_metrics(trainer: Any, output: Any, start_step: int, start_tokens: int) -> dict[str, Any]:
    state = trainer.state
    losses = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h]
    evals = [
        {k.removeprefix("eval_"): v for k, v in h.items() if k.startswith("eval_") or k == "step"}
        for h in state.log_history
        if f"eval_{METRIC}" in h
    ]
    runtime = float(output.metrics.get("train_runtime", 0.0))
    train_only = max(runtime - trainer.eval_seconds, 1e-9)
    steps = state.global_step - start_step
    tokens = int(state.num_input_tokens_seen) - start_tokens
    return {
        "global_step": state.global_step,
        "steps_this_session": steps,
        "train_loss": output.metrics.get("train_loss"),
        "loss_history": losses,
        "eval_history": evals,
        f"best_{METRIC}": state.best_metric,
        "best_step": state.best_global_step,
        "best_checkpoint": state.best_model_checkpoint,
        "tokens_seen": int(state.num_input_tokens_seen),
        "seconds_per_step": round(train_only / steps, 3) if steps else None,
        "tokens_per_second": round(tokens / train_only, 1) if steps else None,
        "eval_seconds": round(trainer.eval_seconds, 2),
    }


def merge_adapter(model_path: str, adapter_dir: Path, target: Path) -> Path:
    """Save base + adapter merged into a plain model folder.

    The unquantized base is merged in float32 and saved in the base checkpoint's own dtype
    (e.g. bf16), ready for ``from_pretrained`` or vLLM without peft.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    saved_dtype = getattr(AutoConfig.from_pretrained(model_path), "dtype", None) or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().to(saved_dtype)
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(model_path).save_pretrained(tmp)
    return target


# --- entry point -----------------------------------------------------------------------------


def finetune(config: FinetuneConfig, train_dataset: Dataset, eval_fn: EvalFn | None = None) -> Path:
    """Tune ``config.model`` on ``train_dataset`` (prompt/completion); return the adapter folder.

    ``eval_fn`` (e.g. a :class:`~llmrec.finetune.evaluation.RankingEvaluator`) is called with a
    scoring backend over the in-training model every ``config.eval_steps`` steps; the best
    checkpoint by NDCG@10 is kept and loaded at the end, and training stops after
    ``config.early_stopping_patience`` evaluations without improvement. Without
    ``eval_steps`` it runs once after training, for the manifest.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _finetune(config, train_dataset, eval_fn)
    finally:
        torch.set_num_threads(previous_threads)


def _finetune(config: FinetuneConfig, train_dataset: Dataset, eval_fn: EvalFn | None) -> Path:
    import torch
    from transformers import EarlyStoppingCallback

    started = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = out / CHECKPOINTS
    resume_from = last_checkpoint(checkpoint_dir) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("resume: no complete checkpoint in %s, starting from scratch", checkpoint_dir)
    if not config.resume and last_checkpoint(checkpoint_dir) is not None:
        raise LlmrecError(
            f"{checkpoint_dir} already holds checkpoints: pass resume=True to continue that run, "
            "or choose another output_dir"
        )
    if config.eval_steps is not None and eval_fn is None:
        logger.warning("eval_steps=%s but no eval_fn: no in-training evaluation", config.eval_steps)

    model_path = resolve_model(config.model)
    device = pick_device(config.device)
    dtype_name = resolve_dtype(config.dtype, device)
    dtype = getattr(torch, dtype_name)
    tokenizer = load_tokenizer(model_path)
    template = PromptTemplate.load(config.template)
    label_ids = dict(zip(template.labels, label_token_ids(tokenizer, template.labels)))
    tokenized = tokenize_examples(train_dataset, tokenizer, label_ids)

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
        eval_batch_size=config.eval_batch_size,
    )
    start_step, start_tokens = _resume_point(resume_from)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = _training_metrics(trainer, output, start_step, start_tokens)

    adapter_dir = out / ADAPTER
    with atomic_dir(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
    final_eval = None
    if eval_fn is not None and not (evaluate and trainer.state.best_metric is not None):
        final_eval = eval_fn(
            InTrainingBackend(trainer.model, tokenizer, config.model, config.eval_batch_size)
        )
        metrics[f"best_{METRIC}"] = final_eval.get(METRIC)
    metrics["final_eval"] = final_eval
    train_seconds = time.perf_counter() - started
    manifest = {
        "kind": "llmrec-adapter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": config.model,
        "base_model_path": model_path,
        "template": template.name,
        "template_path": template.path,
        "labels": template.labels,
        "quantization": config.quantization,
        "device": device,
        "dtype": dtype_name,
        "data": describe_data(train_dataset, tokenized, config),
        "config": config.to_dict(),
        "metrics": metrics,
        "resumed_from": str(resume_from) if resume_from else None,
        "train_seconds": round(train_seconds, 2),
        "versions": library_versions(),
    }
    atomic_write_json(out / MANIFEST, manifest)
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


def main(argv: list[str] | None = None) -> Path:
    """Script entry: ``python -m llmrec.finetune.trainer --config C --train-data D [--resume]``."""
    parser = argparse.ArgumentParser(
        prog="python -m llmrec.finetune.trainer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="FinetuneConfig as YAML or JSON")
    parser.add_argument(
        "--train-data", required=True, help="folder of a Dataset.save_to_disk of build_examples"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = FinetuneConfig.from_yaml(ns.config)
    if ns.resume:
        config.resume = True
    adapter = finetune(config, Dataset.load_from_disk(ns.train_data))
    print(adapter)
    return adapter


if __name__ == "__main__":
    main()
