"""The model a tuning run trains: the base model (quantized, ready for k-bit training) + LoRA."""

from __future__ import annotations

from typing import Any

from llmrec.finetune.config import FinetuneConfig
from llmrec.llm.models import load_causal_lm


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
    """A fresh LoRA (initialized from ``config.seed``) or ``config.adapter``, trainable."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.adapter:
        return PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
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
