"""Write an evaluation report: JSON (complete record), Markdown (to read), PNG (to see)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmrec.errors import ConfigError
from llmrec.io import atomic_dir, jsonable


def markdown_report(report: dict[str, Any]) -> str:
    """Readable Markdown: what was run, then one metrics table per user group."""
    ds = report["dataset"]
    proto = report["protocol"]
    ks = report["config"]["ks"]
    cand_k = report["config"]["num_candidates"]
    lines = [
        f"# Retrieval evaluation: {ds['name']}",
        "",
        f"- data: `{ds['source']}` ({ds['users']} users, {ds['items_interacted']} items, "
        f"{ds['interactions']} interactions after cleaning)",
    ]
    lines += [f"- {key}: {value}" for key, value in proto.items()]
    lines += [f"- seed: {report['seed']}; elapsed: {report['elapsed_seconds']} s", ""]
    metric_cols = [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["mrr"]
    header = ["method", *[c.replace("ndcg", "NDCG").replace("recall", "Recall") for c in metric_cols]]
    header += [f"cand. Recall@{cand_k}", "user cov.", "item cov."]
    for group, body in report["groups"].items():
        lines += [f"## Users: {group} ({body['users']})", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for name, res in body["methods"].items():
            row = [name] + [f"{res['metrics'][c]:.4f}" for c in metric_cols]
            row += [
                f"{res['candidate_recall'][f'@{cand_k}']:.4f}",
                f"{res['user_coverage']:.3f}",
                f"{res['item_coverage']:.3f}",
            ]
            lines.append("| " + " | ".join(row) + " |")
        if "rerank" in body:
            lines += _rerank_table(body, ks)
        lines += _uncertainty_table(report, group)
        skipped = {n: i["skipped"] for n, i in body.get("fit", {}).items() if "skipped" in i}
        for name, why in skipped.items():
            lines.append(f"\n{name}: skipped ({why.splitlines()[0]})")
        lines.append("")
    return "\n".join(lines)


def _uncertainty_table(report: dict[str, Any], group: str, metric: str = "ndcg@10") -> list[str]:
    """Mean [95% CI] of ``metric`` per method and its paired difference to the baseline; a
    difference whose CI excludes 0 is marked with *."""
    rows = [r for r in report.get("rows", []) if r["slice"] == group and r["metric"] == metric]
    if not rows:
        return []
    diffs = {
        c["method"]: c for c in report.get("comparisons", []) if c["slice"] == group and c["metric"] == metric
    }
    lines = [
        "",
        f"{metric} with 95% bootstrap CIs over users; paired difference to the baseline (* = CI excludes 0):",
        "",
        f"| method | {metric} [95% CI] | baseline | difference [95% CI] | p |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        c = diffs.get(r["method"])
        cells = [r["method"], f"{r['mean']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"]
        if c is None:
            cells += ["-", "-", "-"]
        else:
            mark = "*" if c["ci_low"] > 0 or c["ci_high"] < 0 else ""
            cells += [
                c["baseline"],
                f"{c['diff']:+.4f}{mark} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                f"{c['p_value']:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rerank_table(body: dict[str, Any], ks: list[int]) -> list[str]:
    rr = body["rerank"]
    retr = body["methods"][rr["retriever"]]
    cols = ["ndcg@10", "recall@10", "mrr"] if 10 in ks else ["mrr"]
    head = [f"all {c}" for c in cols] + [f"subset {c}" for c in cols] + ["users/s"]
    lines = [
        "",
        f"LLM reranking of the {rr['retriever']} top list ({rr['template']} template). "
        "Subset = users whose held-out item was retrieved.",
        "",
        "| stage | " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(head)) + "|",
    ]
    first = next(iter(rr["rows"].values()))
    base = [f"{retr['metrics'][c]:.4f}" for c in cols]
    base += [f"{first['subset_retriever_metrics'][c]:.4f}" for c in cols] + ["-"]
    lines.append(f"| {rr['retriever']} alone | " + " | ".join(base) + " |")
    for label, row in rr["rows"].items():
        vals = [f"{row['metrics'][c]:.4f}" for c in cols] + [f"{row['subset_metrics'][c]:.4f}" for c in cols]
        vals.append(f"{row['users_per_second']:.2f}")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    lines.append(f"\nretrieved users: {first['retrieved_users']} of {body['users']}")
    for label, fusion in rr.get("fusion", {}).items():
        table = ", ".join(f"w={w}: {v:.4f}" for w, v in fusion["validation_ndcg@10"].items())
        lines.append(
            f"\nfusion weight for '{label}' chosen on {fusion['validation_users']} validation users "
            f"({fusion['validation_retrieved']} retrieved): NDCG@10 {table}; "
            f"retriever alone {fusion['validation_retriever_ndcg@10']:.4f}"
        )
    return lines


def plot_report(report: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of NDCG@10 and Recall@10 per method and group; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = report["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (group, body) in zip(axes[0], groups.items()):
        rows = {n: r["metrics"] for n, r in body["methods"].items()}
        for row in body.get("rerank", {}).get("rows", {}).values():
            name = "LLM rerank" + (f" x{row['shuffles']}" if row["shuffles"] else "")
            if "retriever_weight" in row:
                name += f" + fusion w={row['retriever_weight']}"
            rows[name] = row["metrics"]
        names = list(rows)
        ndcg = [rows[n].get("ndcg@10", 0.0) for n in names]
        rec = [rows[n].get("recall@10", 0.0) for n in names]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], ndcg, width=0.4, label="NDCG@10")
        ax.bar([x + 0.2 for x in xs], rec, width=0.4, label="Recall@10")
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_title(f"{report['dataset']['name']}: {group} users ({body['users']})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_writable(out_dir: str | Path) -> Path:
    """Fail now, not after the run, when the report folder cannot be created or written."""
    out = Path(out_dir)
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create or write here ({parent} is not a writable folder)",
            parameter="out",
            value=str(out),
        )
    return out


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``stem.json``, ``stem.md`` and ``stem.png`` as one folder, atomically: a killed run
    leaves the previous report whole, never a new JSON beside an older plot."""
    out = Path(out_dir)
    names = {"json": f"{stem}.json", "markdown": f"{stem}.md"}
    with atomic_dir(out, marker=names["json"]) as tmp:
        (tmp / names["json"]).write_text(
            json.dumps(report, indent=2, default=jsonable) + "\n", encoding="utf-8"
        )
        (tmp / names["markdown"]).write_text(markdown_report(report), encoding="utf-8")
        if plot_report(report, tmp / f"{stem}.png") is not None:
            names["plot"] = f"{stem}.png"
    return {kind: out / name for kind, name in names.items()}
