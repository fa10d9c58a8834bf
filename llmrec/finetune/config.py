"""``FinetuneConfig``: every setting of one tuning run; its fields are the CLI flags / YAML keys.

llmrec's own fields (model, template, LoRA, data, evaluation, output) plus the usual
trl/transformers training fields; :meth:`FinetuneConfig.to_sft_config` builds trl's
``SFTConfig`` from them, with ``sft_args`` passed through for anything else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from llmrec.errors import ConfigError

CANDIDATE_ORDERS = ("shuffled", "retriever")
"""How training candidates are chosen and ordered (see :mod:`llmrec.finetune.examples`)."""

METRIC = "ndcg@10"
"""Validation metric used to keep the best checkpoint and to stop early."""


@dataclass
class FinetuneConfig:
    """Settings of one instruction-tuning run (QLoRA by default)."""

    # --- model and prompt ---
    model: str = "smollm2-135m-instruct"
    """Hub id, local folder, or an offline model name (see ``llmrec.llm.models``)."""
    template: str = "listwise"
    """Prompt template name (``prompts/<name>.jinja``) or path; must be listwise."""
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    """Base weights: bitsandbytes NF4 + double quant ('4bit', QLoRA), int8, or plain."""
    device: str = "auto"
    """'auto' (GPU when available), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Compute dtype. 'auto': bf16 on GPU and on CPUs with native bf16, else float32."""
    threads: int | None = None
    """CPU threads for torch during the run (None = torch's default; restored afterwards).
    On a CPU shared with other busy processes, 1 thread (or ``OMP_WAIT_POLICY=PASSIVE`` in the
    environment) avoids OpenMP threads spin-waiting for each other, which was seen to make
    every step ~15x slower."""
    from_adapter: str | None = None
    """Start from this PEFT adapter (e.g. the source-domain one) instead of a fresh LoRA."""
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # --- training data (read by the caller that builds the examples) ---
    dataset: str | None = None
    """Description of the training data for the manifest (e.g. a dataset name or folder)."""
    domain: str | None = None
    """Source domain to tune on (cross-domain data); None = all interactions."""
    retriever: str = "fused"
    """Generator whose top lists give hard negatives and the validation candidates."""
    n_candidates: int = 20
    windows: int = 1
    """Targets per user: the last ``windows`` training positions (sliding window)."""
    hard_fraction: float = 0.5
    candidate_order: Literal["shuffled", "retriever"] = "shuffled"
    """``shuffled``: target + negatives in random order (no position information);
    ``retriever``: the retriever's top list in its order, as at test time, only examples
    whose target it retrieves (needs ``hard_fraction: 1``)."""
    train_users: int | None = None
    """Few-shot: a seeded sample of this many users (None = all)."""
    max_prompt_tokens: int = 1024
    cold_start_source: str | None = None
    """Tuning on the target domain of a cross-domain evaluation: that evaluation's source
    domain. Its cold-start users (drawn exactly as ``llmrec evaluate --source S --target
    <domain> --cold-fraction F --seed <seed>`` draws them) are left out of training, so the
    target history hidden from them at test time never reaches the adapter."""
    cold_fraction: float = 0.2
    # --- evaluation and selection ---
    eval_users: int = 64
    """Validation users for the ranking metric (among those whose item is retrieved); 0 = none."""
    eval_steps: int | None = None
    """Compute validation NDCG@10 every this many steps (None = no in-training evaluation)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without a better NDCG@10 (None = never)."""
    eval_batch_size: int = 8
    # --- output ---
    output_dir: str = "runs/finetune"
    """Run folder: ``checkpoints/``, ``adapter/``, ``manifest.json`` (and ``merged/``)."""
    resume: bool = False
    """Continue from the last complete checkpoint in ``output_dir`` (fresh start if none)."""
    merge: bool = False
    """Also save the base model with the adapter merged in (``output_dir/merged``)."""
    seed: int = 0
    # --- trl / transformers training fields ---
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run ``num_train_epochs``)."""
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    save_steps: int = 100
    save_total_limit: int | None = 3
    logging_steps: int = 10
    gradient_checkpointing: bool = True
    label_logits_only: bool = True
    """Project only the positions that predict a label through the LM head (the loss is on
    the label only anyway): saves the vocabulary-sized logits of every prompt position."""
    sft_args: dict[str, Any] = field(default_factory=dict)
    """Any other ``trl.SFTConfig`` field, passed through unchanged."""

    def __post_init__(self) -> None:
        if self.quantization not in ("4bit", "8bit", "none"):
            raise ConfigError("must be 4bit, 8bit or none", parameter="quantization", value=self.quantization)
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(
                "must be auto, bfloat16, float16 or float32", parameter="dtype", value=self.dtype
            )
        if self.eval_users < 0:
            raise ConfigError(
                "must be >= 0 (0 = no validation ranking)", parameter="eval_users", value=self.eval_users
            )
        for name in ("lora_r", "lora_alpha", "n_candidates", "windows", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", parameter=name, value=getattr(self, name))
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", parameter=name, value=getattr(self, name))
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", parameter="lora_dropout", value=self.lora_dropout)
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ConfigError("must be in [0, 1)", parameter="cold_fraction", value=self.cold_fraction)
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ConfigError("must be in [0, 1]", parameter="hard_fraction", value=self.hard_fraction)
        if self.candidate_order not in CANDIDATE_ORDERS:
            raise ConfigError(
                "must be shuffled or retriever", parameter="candidate_order", value=self.candidate_order
            )
        if self.candidate_order == "retriever" and self.hard_fraction != 1.0:
            raise ConfigError(
                "candidate_order 'retriever' takes every candidate from the retriever; set hard_fraction: 1",
                parameter="hard_fraction",
                value=self.hard_fraction,
            )
        if not self.target_modules:
            raise ConfigError(
                "name at least one module", parameter="target_modules", value=self.target_modules
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError("must be >= 1 or None", parameter="threads", value=self.threads)
        if self.train_users is not None and self.train_users < 1:
            raise ConfigError("must be >= 1 or None", parameter="train_users", value=self.train_users)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("must be >= 1, or -1 for epochs", parameter="max_steps", value=self.max_steps)
        if self.eval_steps is not None:
            if self.eval_steps < 1:
                raise ConfigError("must be >= 1 or None", parameter="eval_steps", value=self.eval_steps)
            if self.save_steps % self.eval_steps:
                raise ConfigError(
                    f"must be a multiple of eval_steps={self.eval_steps} so the best checkpoint is saved; "
                    f"e.g. save_steps={self.eval_steps}",
                    parameter="save_steps",
                    value=self.save_steps,
                )
        if self.early_stopping_patience is not None:
            if self.eval_steps is None:
                raise ConfigError(
                    "early stopping needs eval_steps",
                    parameter="early_stopping_patience",
                    value=self.early_stopping_patience,
                )
            if self.early_stopping_patience < 1:
                raise ConfigError(
                    "must be >= 1 or None",
                    parameter="early_stopping_patience",
                    value=self.early_stopping_patience,
                )
        self._check_sft_args()

    def _check_sft_args(self) -> None:
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

    # --- (de)serialization ---
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Build from a plain dict; unknown keys raise :class:`ConfigError` naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ConfigError(
                f"unknown setting(s); valid: {', '.join(sorted(valid))}", parameter="config", value=unknown
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FinetuneConfig:
        """Read a YAML (or JSON) recipe, e.g. ``finetune/source.yaml``."""
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ConfigError(
                "a recipe must be a mapping of settings", parameter=str(path), value=type(values).__name__
            )
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

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
            "per_device_eval_batch_size": self.eval_batch_size,
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
