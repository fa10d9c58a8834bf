"""Training throughput of the reranker on this CPU, against the machine's matmul peak.

Real prompts (ml-latest-small training examples built by ``llmrec.finetune``, the
``listwise_compact`` template), the real model (the offline default unless ``--model``),
LoRA r=8 on q/v, the label-only loss the trainer uses (``label_loss``), AdamW: each
configuration runs ``--warmup`` steps, then ``--steps`` timed steps (forward + backward +
optimizer). Configurations:

- ``qlora-4bit``: bitsandbytes NF4 base (the recipes' default), ``--base-threads`` threads;
- ``lora-fp32``: plain fp32 base, every core;
- ``lora-fp32-grouped``: the same with length-grouped batches (less padding);
- ``lora-bf16``: bf16 base where a probe shows bf16 matmuls are fast on this CPU.

Tokens/s counts prompt tokens (no padding). FLOPs: forward + backward through a LoRA model
~ 4 x parameters per token (forward 2, gradients of the activations 2; the LoRA weights'
own gradients are negligible); the fraction is of the fp32 matmul peak measured in the same
run with the same thread count.

    python eval/bench_train.py --steps 6 --out eval/results/bench_train.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions (avx*, amx*), sorted."""
    from llmrec.llm.models import cpu_flags as all_flags

    return sorted(f for f in all_flags() if f.startswith(("avx", "amx")))


def matmul_gflops(dtype, threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def build_batches(tokenized, batch_size: int, grouped: bool, seed: int) -> list[list[int]]:
    """Example indices per batch: a seeded shuffle, or length-grouped (sorted by length within
    a seeded shuffle of chunks of 8 batches, then batches in random order)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tokenized))
    if grouped:
        lengths = np.asarray([len(tokenized[int(i)]["input_ids"]) for i in order])
        chunk = batch_size * 8
        order = np.concatenate(
            [
                order[lo : lo + chunk][np.argsort(-lengths[lo : lo + chunk], kind="stable")]
                for lo in range(0, len(order), chunk)
            ]
        )
    batches = [order[lo : lo + batch_size].tolist() for lo in range(0, len(order), batch_size)]
    if grouped:
        rng.shuffle(batches)
    return batches


def collate(tokenized, rows: list[int], pad_id: int):
    """Right-padded input_ids / attention_mask / labels (-100 except on the label token)."""
    import torch

    seqs = [tokenized[i]["input_ids"] for i in rows]
    masks = [tokenized[i]["completion_mask"] for i in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (s, m) in enumerate(zip(seqs, masks)):
        ids[r, : len(s)] = torch.tensor(s)
        att[r, : len(s)] = 1
        labels[r, : len(s)] = torch.where(torch.tensor(m) == 1, torch.tensor(s), -100)
    return {"input_ids": ids, "attention_mask": att, "labels": labels}, sum(len(s) for s in seqs)


def run_config(name, quantization, dtype, threads, grouped, tokenized, model_path, args) -> dict:
    import torch

    from llmrec.finetune.config import FinetuneConfig
    from llmrec.finetune.model import attach_adapter, load_base_model
    from llmrec.finetune.trainer import label_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = FinetuneConfig(quantization=quantization, gradient_checkpointing=False, template="listwise_compact")
    model = attach_adapter(load_base_model(cfg, model_path, "cpu", dtype), cfg, "cpu")
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    if quantization == "4bit":  # packed 4-bit weights count two per byte element
        n_params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    batches = build_batches(tokenized, args.batch_size, grouped, seed=0)
    pad_id = 0
    tokens = padded = 0
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start, tokens, padded = time.perf_counter(), 0, 0
        inputs, n_tok = collate(tokenized, batches[step % len(batches)], pad_id)
        loss, _, _ = label_loss(model, inputs)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        tokens += n_tok
        padded += int(inputs["input_ids"].numel())
    seconds = time.perf_counter() - start
    del model, optim
    return {
        "config": name,
        "quantization": quantization,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": threads,
        "length_grouped": grouped,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "padding_share": round(1 - tokens / max(padded, 1), 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "params": n_params,
        "gflops": round(4 * n_params * padded / seconds / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--base-threads", type=int, default=1, help="Threads of the qlora-4bit row (today: 1)."
    )
    parser.add_argument("--configs", default="qlora-4bit,lora-fp32,lora-fp32-grouped,lora-bf16")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_train.json"))
    args = parser.parse_args(argv)

    import torch

    from llmrec.candidates import TrainData, make_generator
    from llmrec.data import clean, leave_one_out, load_dataset
    from llmrec.finetune.examples import build_examples, sample_users
    from llmrec.finetune.trainer import tokenize_examples
    from llmrec.io import atomic_write_json
    from llmrec.llm.models import load_tokenizer, resolve_model
    from llmrec.llm.prompting import PromptRenderer, PromptTemplate

    cores = len(os.sched_getaffinity(0))
    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(model_path)
    template = PromptTemplate.load("listwise_compact")
    split = leave_one_out(clean(load_dataset("ml-latest-small")))
    retriever = make_generator("itemknn").fit(TrainData(split.catalog, split.sequences("valid")))
    users = sample_users(split, args.examples, 0)
    examples = build_examples(
        split, None, retriever, PromptRenderer(template, tokenizer, 640), users=users, seed=0, progress=False
    )
    label_ids = {lab: tokenizer(lab, add_special_tokens=False)["input_ids"][-1] for lab in template.labels}
    tokenized = tokenize_examples(examples, tokenizer, label_ids)

    peak = {
        "fp32_all_cores": round(matmul_gflops(torch.float32, cores), 1),
        "fp32_one_core": round(matmul_gflops(torch.float32, 1), 1),
        "bf16_all_cores": round(matmul_gflops(torch.bfloat16, cores, repeats=2), 1),
    }
    print(f"CPU: {cpu_name()} ({cores} cores; {' '.join(cpu_flags())}); load {os.getloadavg()}")
    print(f"matmul 2048^2 GFLOP/s: {peak}")
    specs = {
        "qlora-4bit": ("4bit", torch.float32, args.base_threads, False),
        "lora-fp32": ("none", torch.float32, cores, False),
        "lora-fp32-grouped": ("none", torch.float32, cores, True),
        "lora-bf16": ("none", torch.bfloat16, cores, True),
    }
    rows = []
    for name in args.configs.split(","):
        quantization, dtype, threads, grouped = specs[name]
        if dtype == torch.bfloat16 and peak["bf16_all_cores"] < peak["fp32_all_cores"]:
            print(
                f"{name}: skipped (bf16 matmul {peak['bf16_all_cores']} < fp32 "
                f"{peak['fp32_all_cores']} GFLOP/s)"
            )
            continue
        row = run_config(name, quantization, dtype, threads, grouped, tokenized, model_path, args)
        ref = peak["fp32_all_cores"] if threads == cores else peak["fp32_one_core"]
        row["fraction_of_fp32_peak"] = round(row["gflops"] / ref, 3)
        rows.append(row)
        print(
            f"{name:18s} {row['tokens_per_second']:8.1f} tok/s  {row['gflops']:7.1f} GFLOP/s  "
            f"{row['fraction_of_fp32_peak']:.0%} of fp32 peak ({threads} threads)  "
            f"padding {row['padding_share']:.0%}"
        )
    base = next((r for r in rows if r["config"] == "qlora-4bit"), None)
    for r in rows:
        r["ratio_to_qlora_4bit"] = (
            round(r["tokens_per_second"] / base["tokens_per_second"], 2) if base else None
        )
    result = {
        "benchmark": "train",
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "examples": len(tokenized),
        "peak_gflops": peak,
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    print(f"ratios to qlora-4bit: {[(r['config'], r['ratio_to_qlora_4bit']) for r in rows]}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
