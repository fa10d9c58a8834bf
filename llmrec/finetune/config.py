"""``FinetuneConfig``: every setting of one tuning run; its fields are the CLI flags / YAML keys.

The shared data, retriever and model groups (:mod:`llmrec.config`), llmrec's tuning fields
(LoRA, examples, evaluation, output) plus the usual trl/transformers training fields;
:meth:`FinetuneConfig.to_sft_config` builds trl's ``SFTConfig`` from them, with ``sft_args``
passed through for anything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmrec.config import DataConfig, ModelConfig, RetrieverConfig, load_config, require_positive, setting
from llmrec.errors import ConfigError

CANDIDATE_ORDERS = ("shuffled", "retriever")
"""How training candidates are chosen and ordered (see :mod:`llmrec.finetune.examples`)."""

METRIC = "ndcg@10"
"""Validation metric used to keep the best checkpoint and to stop early."""


@dataclass(kw_only=True)
class FinetuneConfig(ModelConfig, RetrieverConfig, DataConfig):
    """Settings of one instruction-tuning run (QLoRA by default).

    Data: ``target`` is the domain tuned on (None = all interactions); with ``source`` too,
    the cold-start users that ``llmrec evaluate --source S --target T`` draws (same
    ``cold_fraction`` and ``seed``) are left out, so the target history hidden from them at
    test time never reaches the adapter. ``adapter``: start from this adapter (transfer)
    instead of a fresh LoRA. ``retriever``: hard negatives and validation candidates.
    """

    task: Literal["rank", "history"] = setting(
        "rank",
        "rank: the listwise reranker (a candidate list in, the held-out item's label out); history: "
        "a causal LM on users' training histories as title lines (llmrec.finetune.histories), "
        "the likelihood scorer's model.",
    )
    history_window: int = setting(32, "history task: titles per training text (consecutive, one user).")
    history_header: str = setting(
        "Items a user liked, one per line:\n",
        "history task: the line before the titles; the likelihood scorer must use the same one.",
    )
    quantization: Literal["none", "4bit", "8bit"] = setting(
        "4bit", "Base weights: bitsandbytes NF4 + double quant ('4bit', QLoRA), int8, or plain."
    )
    lora_r: int = setting(8, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA alpha.")
    lora_dropout: float = setting(0.05, "LoRA dropout.")
    target_modules: list[str] = setting(["q_proj", "v_proj"], "Modules that get LoRA weights.")
    windows: int = setting(1, "Targets per user: the last N training positions (sliding window).")
    hard_fraction: float = setting(0.5, "Share of negatives from the retriever's top list.")
    candidate_order: Literal["shuffled", "retriever"] = setting(
        "shuffled",
        "shuffled: target + negatives in random order; retriever: the retriever's top list in its "
        "order, as at test time, only examples whose target it retrieves (needs hard_fraction 1).",
    )
    retriever_before_targets: bool = setting(
        False,
        "Fit the retriever that picks training candidates (and their evidence) without each user's "
        "last `windows` training items, the targets: as at test time, it has not seen what it ranks.",
    )
    train_users: int | None = setting(None, "Few-shot: a seeded sample of this many users (default all).")
    eval_users: int = setting(64, "Validation users for the ranking metric (0 = none).")
    eval_steps: int | None = setting(None, "Validation NDCG@10 every N steps (default: none in training).")
    early_stopping_patience: int | None = setting(
        None, "Stop after N evaluations without a better NDCG@10 (default never)."
    )
    output_dir: str = setting("runs/finetune", "Run folder: checkpoints/, adapter/, manifest.json.")
    resume: bool = setting(False, "Continue from the last complete checkpoint in output_dir.")
    force_resume: bool = setting(
        False,
        "Resume even though settings that change what is trained differ from output_dir/run_config.json.",
    )
    merge: bool = setting(False, "Also save the base model with the adapter merged in (output_dir/merged).")
    learning_rate: float = setting(2e-4, "Peak learning rate.")
    num_train_epochs: float = setting(1.0, "Epochs (unless max_steps is set).")
    max_steps: int = setting(-1, "Stop after N optimizer steps (-1 = run num_train_epochs).")
    per_device_train_batch_size: int = setting(4, "Prompts per step and device.")
    gradient_accumulation_steps: int = setting(1, "Steps accumulated per optimizer step.")
    lr_scheduler_type: str = setting("linear", "transformers scheduler name.")
    warmup_steps: int = setting(0, "Linear warm-up steps.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    save_steps: int = setting(100, "Checkpoint every N steps.")
    save_total_limit: int | None = setting(3, "Checkpoints kept.")
    logging_steps: int = setting(10, "Log the loss every N steps.")
    gradient_checkpointing: bool = setting(True, "Recompute activations in backward (less memory).")
    label_logits_only: bool = setting(
        True, "Project only the label positions through the LM head (the loss is on the label only)."
    )
    loss: Literal["vocab", "labels"] = setting(
        "vocab",
        "vocab: cross-entropy of the answer label over the whole vocabulary; labels: over the "
        "template's label tokens only, the softmax the reranker reads at inference.",
    )
    sft_args: dict[str, Any] = setting({}, "Any other trl.SFTConfig field, passed through (YAML only).")

    def _validate(self) -> None:
        if self.backend != "transformers":
            raise ConfigError("tuning runs on transformers", parameter="backend", value=self.backend)
        if self.eval_users < 0:
            raise ConfigError(
                "must be >= 0 (0 = no validation ranking)", parameter="eval_users", value=self.eval_users
            )
        require_positive(
            self,
            "lora_r",
            "lora_alpha",
            "windows",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "logging_steps",
            "train_users",
            "eval_steps",
            "early_stopping_patience",
            "history_window",
        )
        if self.task == "history" and (self.label_logits_only or self.loss != "vocab"):
            raise ConfigError(
                "the history LM predicts every title token over the vocabulary: set loss: vocab and "
                "label_logits_only: false",
                parameter="task",
                value=self.task,
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", parameter="lora_dropout", value=self.lora_dropout)
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ConfigError("must be in [0, 1]", parameter="hard_fraction", value=self.hard_fraction)
        if self.candidate_order == "retriever" and self.hard_fraction != 1.0:
            raise ConfigError(
                "candidate_order 'retriever' takes every candidate from the retriever; set hard_fraction: 1",
                parameter="hard_fraction",
                value=self.hard_fraction,
            )
        if self.source is not None and self.target is None:
            raise ConfigError(
                "leaving out cold-start users needs the target domain to tune on",
                parameter="target",
                value=None,
            )
        if self.loss == "labels" and not self.label_logits_only:
            raise ConfigError(
                "the label softmax needs label_logits_only: true", parameter="loss", value=self.loss
            )
        if not self.target_modules:
            raise ConfigError(
                "name at least one module", parameter="target_modules", value=self.target_modules
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("must be >= 1, or -1 for epochs", parameter="max_steps", value=self.max_steps)
        if self.eval_steps is not None and self.save_steps % self.eval_steps:
            raise ConfigError(
                f"must be a multiple of eval_steps={self.eval_steps} so the best checkpoint is saved; "
                f"e.g. save_steps={self.eval_steps}",
                parameter="save_steps",
                value=self.save_steps,
            )
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ConfigError(
                "early stopping needs eval_steps",
                parameter="early_stopping_patience",
                value=self.early_stopping_patience,
            )
        self._check_sft_args()

    def _check_sft_args(self) -> None:
        if not self.sft_args:
            return
        from trl import SFTConfig

        known = {f.name for f in dataclasses.fields(SFTConfig)}
        unknown = sorted(set(self.sft_args) - known)
        if unknown:
            raise ConfigError(f"not SFTConfig fields: {unknown}", parameter="sft_args", value=unknown)
        mine = sorted(set(self.sft_args) & {f.name for f in dataclasses.fields(self)})
        if mine:
            raise ConfigError(
                f"set {mine} as FinetuneConfig fields, not in sft_args", parameter="sft_args", value=mine
            )

    @classmethod
    def from_yaml(cls, path: str | Path) -> FinetuneConfig:
        """Read a YAML (or JSON) recipe, e.g. ``finetune/source-arts.yaml``."""
        return load_config(cls, path)

    # --- trl ---
    def to_sft_config(self, checkpoint_dir: str | Path, use_cpu: bool, bf16: bool, evaluate: bool) -> Any:
        """trl ``SFTConfig`` for this run (checkpoints under ``checkpoint_dir``).

        ``evaluate``: validation ranking every ``eval_steps`` (needs ``eval_steps``), keeping
        the best checkpoint by NDCG@10 and loading it at the end.
        """
        from trl import SFTConfig

        args: dict[str, Any] = {
            "output_dir": str(checkpoint_dir),
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "lr_scheduler_type": self.lr_scheduler_type,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "logging_steps": self.logging_steps,
            "logging_first_step": True,
            "seed": self.seed,
            "data_seed": self.seed,
            "use_cpu": use_cpu,
            "bf16": bf16,
            "fp16": False,
            "gradient_checkpointing": self.gradient_checkpointing,
            "completion_only_loss": True,
            # Prompts are already within max_prompt_tokens; truncation would cut the label off.
            "max_length": None,
            "report_to": "none",
            "include_num_input_tokens_seen": "non_padding",
            "per_device_eval_batch_size": self.batch_size,
            "dataloader_num_workers": 0,
        }
        if evaluate and self.eval_steps is not None:
            args.update(
                eval_strategy="steps",
                eval_steps=self.eval_steps,
                metric_for_best_model=METRIC,
                greater_is_better=True,
                load_best_model_at_end=True,
            )
        args.update(self.sft_args)
        return SFTConfig(**args)
