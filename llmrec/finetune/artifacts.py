"""What a tuning run leaves in its folder besides checkpoints: ``run_config.json`` (the
settings its checkpoints are trained with, written when training starts and compared on
``--resume``), ``manifest.json`` (base model, template, data, config, metrics, library
versions) and, when asked, the ``merged/`` model."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from llmrec import __version__
from llmrec.errors import LlmrecError
from llmrec.finetune.config import METRIC, FinetuneConfig
from llmrec.io import atomic_dir, atomic_write_json
from llmrec.llm.models import load_tokenizer
from llmrec.llm.prompting import PromptTemplate

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_CONFIG = "run_config.json"

RESUMABLE = frozenset(
    {
        "output_dir",
        "resume",
        "force_resume",
        "threads",
        "device",
        "eval_users",
        "eval_steps",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "connect_timeout_s",
        "read_timeout_s",
        "retries",
        "merge",
        "early_stopping_patience",
        "batch_size",
        "gradient_checkpointing",
    }
)
"""Settings that may change on ``--resume``: where and how fast the run goes, what it logs,
evaluates and keeps. Every other field (data, examples, template, model, adapter, LoRA,
optimizer, schedule, seed...) changes what the checkpoints are trained on."""


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (recorded, current)}`` for every field outside :data:`RESUMABLE` that differs
    (compared as JSON, so a tuple equals a list); a field missing on one side counts too."""
    old, new = json.loads(json.dumps(dict(recorded))), json.loads(json.dumps(dict(current)))
    return {
        name: (old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if name not in RESUMABLE and old.get(name) != new.get(name)
    }


def run_record(out: Path, config: FinetuneConfig, *, resuming: bool) -> dict[str, Any]:
    """What ``out/run_config.json`` should hold for this run (the caller writes it when training
    starts); for a resumed run, after comparing with the recorded one.

    Resuming with settings that change what is trained (see :data:`RESUMABLE`) is an error
    naming each field, old -> new, unless ``config.force_resume``; then the record becomes the
    new settings with the earlier ones and the changes under ``forced_from``. The record is
    ``{"config": ..., "forced_from": [...]}``; it goes into the manifest too.
    """
    path = out / RUN_CONFIG
    current = config.to_dict()
    record: dict[str, Any] = {"config": current, "forced_from": []}
    if resuming and path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changes = config_changes(previous["config"], current)
        if changes and not config.force_resume:
            listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changes.items())
            raise LlmrecError(
                f"resume: the checkpoints in {out} were trained with other settings ({listed}). "
                f"Resume with the settings in {path}, choose another output_dir for a new run, or "
                "pass --force-resume (force_resume: true) to continue them with the new settings "
                "(the manifest records both)"
            )
        record["forced_from"] = list(previous.get("forced_from", []))
        if changes:
            record["forced_from"].append(
                {"config": previous["config"], "changes": {k: list(v) for k, v in changes.items()}}
            )
    elif resuming:
        logger.warning(
            "resume: %s has no %s (an older run?): its settings cannot be compared", out, RUN_CONFIG
        )
    return record


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
        "target": config.target,
        "source": config.source,
        "examples": len(dataset),
    }
    if config.task == "history":  # title sequences: no candidates, labels or prompt budget
        info.update(task="history", history_window=config.history_window, train_users=config.train_users)
    else:
        info.update(
            num_candidates=config.num_candidates,
            windows=config.windows,
            hard_fraction=config.hard_fraction,
            candidate_order=config.candidate_order,
            train_users=config.train_users,
            retriever=config.retriever,
            max_prompt_tokens=config.max_prompt_tokens,
        )
    info["tokens_per_example"] = (
        {"mean": float(lengths.mean()), "max": int(lengths.max())} if len(lengths) else {}
    )
    if "user" in dataset.column_names:
        info["users"] = len(set(dataset["user"]))
    if "completion" in dataset.column_names:
        counts: dict[str, int] = {}
        for label in dataset["completion"]:
            counts[label] = counts.get(label, 0) + 1
        info["label_counts"] = dict(sorted(counts.items()))
    return info


def training_metrics(trainer: Any, output: Any, start_step: int, start_tokens: int) -> dict[str, Any]:
    """Losses, validation history, the best checkpoint and throughput of this session."""
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


def write_manifest(
    out: Path,
    config: FinetuneConfig,
    template: PromptTemplate,
    *,
    base_model_path: str,
    device: str,
    dtype: str,
    data: dict[str, Any],
    metrics: dict[str, Any],
    resumed_from: Path | None,
    train_seconds: float,
    run_config: dict[str, Any] | None = None,
) -> Path:
    """``out/manifest.json``: what was tuned from what, how, with which result and libraries."""
    manifest = {
        "kind": "llmrec-adapter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": config.model,
        "base_model_path": base_model_path,
        "template": template.name,
        "template_path": template.path,
        "labels": template.labels,
        "quantization": config.quantization,
        "device": device,
        "dtype": dtype,
        "data": data,
        "config": config.to_dict(),
        # what the checkpoints were trained with: this config, and after a forced resume the
        # earlier settings and what changed (run_config.json)
        "forced_from": (run_config or {}).get("forced_from", []),
        "metrics": metrics,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "train_seconds": round(train_seconds, 2),
        "versions": library_versions(),
    }
    return atomic_write_json(out / MANIFEST, manifest)


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
    with atomic_dir(target, marker="config.json") as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(model_path).save_pretrained(tmp)
    return target
