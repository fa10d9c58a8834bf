"""Per-epoch plot of item-token LM runs: training loss, validation NDCG@10 against all items,
and validation NDCG@10 fused with fused-seq's order (the number that chooses the epoch) beside
fused-seq's own, one line per run (training seed).

    python eval/plot_item_tokens.py eval/reports/item-tokens-ml-latest-small.json \
        eval/reports/item-tokens-seed1-ml-latest-small.json --out eval/reports/item-tokens-epochs.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmrec.io import atomic_write_figure

PANELS = (
    ("loss", "training loss (cross-entropy over the catalog)"),
    ("valid_catalog_ndcg@10", "validation NDCG@10, all items"),
    ("valid_fused", "validation NDCG@10, fused with fused-seq"),
)


def load_run(path: Path) -> tuple[str, list[dict], float]:
    """A report's label (its seed), per-epoch training record and fused-seq's validation NDCG@10."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such report (eval/exp_item_tokens.py writes it)")
    report = json.loads(path.read_text(encoding="utf-8"))
    try:
        epochs = report["training"]["epochs"]
        first = next(iter(report["evaluation"].values()))
        retriever = first["rows"]["alone, valid"]["retriever_ndcg@10"][0]
        label = f"seed {report['args']['seed']}"
    except (KeyError, StopIteration, TypeError) as err:
        raise SystemExit(f"{path}: not an eval/exp_item_tokens.py report (missing {err})") from None
    if not epochs or any(key not in epochs[0] for key, _ in PANELS):
        raise SystemExit(f"{path}: no validation numbers per epoch (a --refit-of run has none)")
    return label, epochs, retriever


def plot(runs: list[tuple[str, list[dict], float]], out: Path) -> None:
    """Three panels, one line per run; the last panel has fused-seq as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for ax, (key, title) in zip(axes, PANELS):
        for label, epochs, _ in runs:
            ax.plot([e["epoch"] for e in epochs], [e[key] for e in epochs], marker="o", label=label)
        if key == "valid_fused":
            ax.axhline(runs[0][2], color="grey", ls="--", label="fused-seq alone")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_figure(out, fig)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="eval/exp_item_tokens.py report JSONs")
    parser.add_argument("--out", type=Path, default=Path("eval/reports/item-tokens-epochs.png"))
    args = parser.parse_args(argv)
    plot([load_run(p) for p in args.reports], args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
