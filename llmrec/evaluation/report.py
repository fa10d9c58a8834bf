"""Write an evaluation report: JSON (complete record), Markdown (to read), PNG (to see)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from llmrec.errors import ConfigError
from llmrec.io import atomic_dir, atomic_write_figure, jsonable


def markdown_report(report: dict[str, Any], title: str | None = None, level: int = 1) -> str:
    """Readable Markdown of one run (or, for a suite report, every run): what was run, then
    one metrics table per user group, the LLM rows, CIs and paired differences, slices."""
    if "runs" in report:
        return suite_markdown(report)
    h = "#" * level
    ds = report["dataset"]
    proto = report["protocol"]
    cand_k = report["config"]["num_candidates"]
    lines = [
        f"{h} {title or 'Evaluation: ' + ds['name']}",
        "",
        f"- data: `{ds['source']}` ({ds['users']} users, {ds['items_interacted']} items, "
        f"{ds['interactions']} interactions after cleaning; fingerprint {report.get('fingerprint', '-')})",
    ]
    lines += [f"- {key}: {value}" for key, value in proto.items()]
    lines += [f"- seed: {report['seed']}; {_timing_line(report)}", ""]
    metric_cols = _table_metrics(report)
    beyond = _beyond_by(report)
    header = ["method", *[_metric_title(c) for c in metric_cols]]
    beyond_cols = sorted({m for (_, _, m) in beyond}, key=lambda m: (m.split("@")[0], m))
    header += [_metric_title(c) for c in beyond_cols] + ["user cov."]
    for group, body in report["groups"].items():
        lines += [f"{h}# Users: {group} ({body['users']})", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for name, res in body["methods"].items():
            row = [name] + [_fmt(_method_metric(res, c, cand_k)) for c in metric_cols]
            row += [
                _fmt(beyond.get((group, name, c)), digits=3 if "coverage" in c else 1) for c in beyond_cols
            ]
            row += [f"{res['user_coverage']:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
        if "rerank" in body:
            lines += _rerank_table(body, report["config"]["ks"])
        lines += _uncertainty_table(report, group)
        skipped = {n: i["skipped"] for n, i in body.get("fit", {}).items() if "skipped" in i}
        for name, why in skipped.items():
            lines.append(f"\n{name}: skipped ({why.splitlines()[0]})")
        lines.append("")
    lines += _slices_table(report, h)
    return "\n".join(lines)


def suite_markdown(report: dict[str, Any]) -> str:
    """Markdown of a suite report: its description, then every run."""
    suite = report["suite"]
    lines = [f"# Suite: {suite['name']}", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines += [
        f"- runs: {', '.join(report['runs'])}; llmrec {report['versions']['llmrec']}; {_timing_line(report)}",
        "- regenerate: `llmrec evaluate <suite file> --out <this folder>`; check a re-run against "
        "it: `llmrec evaluate <suite file> --check <this folder>`",
        "",
    ]
    for name, body in report["runs"].items():
        lines.append(markdown_report(body, title=f"Run: {name}", level=2))
    return "\n".join(lines)


def _timing_line(report: dict[str, Any]) -> str:
    cache = {k: v for k, v in report.get("cache", {}).items() if isinstance(v, dict)}
    served = ", ".join(f"{kind} {v['hits']} cached / {v['misses']} computed" for kind, v in cache.items())
    if not served:
        return f"wall time {report['elapsed_seconds']} s"
    hits = sum(v["hits"] for v in cache.values())
    saved = sum(v.get("computed_seconds", 0.0) - v["seconds"] for v in cache.values())
    line = f"wall time {report['elapsed_seconds']} s (cache: {served})"
    if hits:
        line += f"; computing everything anew: about {report['elapsed_seconds'] + saved:.0f} s"
    return line


def _table_metrics(report: dict[str, Any]) -> list[str]:
    metrics = report.get("metrics") or []
    return [m for m in metrics if m.split("@")[0] not in ("coverage", "popularity")]


def _metric_title(metric: str) -> str:
    for short, long in (("cand_recall", "cand. Recall"), ("ndcg", "NDCG"), ("recall", "Recall")):
        if metric.startswith(short + "@"):
            return long + metric[len(short) :]
    return metric.replace("mrr", "MRR").replace("coverage", "coverage").replace("popularity", "pop.")


def _method_metric(res: dict[str, Any], metric: str, cand_k: int) -> float | None:
    if metric.startswith("cand_recall@"):
        return res["candidate_recall"].get("@" + metric.split("@")[1])
    return res["metrics"].get(metric)


def diff_cell(diff: list[float] | tuple[float, ...]) -> str:
    """A paired difference ``[mean, low, high, ...]`` as ``+m [+l, +h]``, bold when its CI excludes 0."""
    cell = f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"
    return f"**{cell}**" if diff[1] > 0 or diff[2] < 0 else cell


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _beyond_by(report: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    return {(b["slice"], b["method"], b["metric"]): b["value"] for b in report.get("beyond_accuracy", [])}


def _slices_table(report: dict[str, Any], h: str, metric: str = "ndcg@10") -> list[str]:
    """NDCG@10 [CI] of every method per slice (slices beyond the groups)."""
    groups = set(report["groups"])
    rows = [r for r in report.get("rows", []) if r["slice"] not in groups and r["metric"] == metric]
    if not rows:
        return []
    slices = list(dict.fromkeys(r["slice"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["slice"], r["method"]): r for r in rows}
    marks = {
        (c["slice"], c["method"]): "*"
        for c in report.get("comparisons", [])
        if c["metric"] == metric and (c["ci_low"] > 0 or c["ci_high"] < 0)
    }
    lines = [
        f"{h}# Slices: {metric} [95% CI] (* = paired difference to the baseline excludes 0)",
        "",
        "| slice | users | " + " | ".join(_short_label(m) for m in methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for sl in slices:
        users = next(r["users"] for r in rows if r["slice"] == sl)
        cells = []
        for m in methods:
            r = cell.get((sl, m))
            cells.append(
                "-"
                if r is None
                else f"{r['mean']:.4f}{marks.get((sl, m), '')} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            )
        lines.append(f"| {sl} | {users} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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


def plot_report(report: dict[str, Any], path: Path, metric: str = "ndcg@10") -> Path | None:
    """Bar chart of ``metric`` per method with 95% CI error bars, one panel per group and
    slice; None without matplotlib or without rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report.get("rows", []) if r["metric"] == metric]
    slices = list(dict.fromkeys(r["slice"] for r in rows))
    if not slices:
        return None
    cols = min(3, len(slices))
    n_rows = (len(slices) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.8 * cols, 4.4 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(slices) :]:
        ax.set_visible(False)
    for ax, sl in zip(axes.ravel(), slices):
        these = [r for r in rows if r["slice"] == sl]
        names = [_short_label(r["method"]) for r in these]
        means = [r["mean"] for r in these]
        err = [[r["mean"] - r["ci_low"] for r in these], [r["ci_high"] - r["mean"] for r in these]]
        colors = ["tab:orange" if " + " in r["method"] else "tab:blue" for r in these]
        ax.bar(range(len(these)), means, yerr=err, capsize=3, color=colors)
        ax.set_xticks(range(len(these)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(metric.replace("ndcg", "NDCG").replace("recall", "Recall") + " (95% CI)")
        ax.set_title(f"{report['dataset']['name']}: {sl} ({these[0]['users']} users)", fontsize=9)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=100)
    plt.close(fig)
    return path


def _short_label(method: str) -> str:
    """LLM rows have long labels; keep the part a plot can show."""
    label = method.replace(", fused with retriever order", " +fusion").replace(", chosen on validation", "")
    return label if len(label) <= 48 else label[:45] + "..."


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
    """Write ``stem.json``, ``stem.md`` and the plots as one folder, atomically: a killed run
    leaves the previous report whole, never a new JSON beside an older plot. A suite report
    gets one plot per run (``stem-<run>.png``)."""
    out = Path(out_dir)
    names = {"json": f"{stem}.json", "markdown": f"{stem}.md"}
    with atomic_dir(out, marker=names["json"]) as tmp:
        (tmp / names["json"]).write_text(report_json(report), encoding="utf-8")
        (tmp / names["markdown"]).write_text(markdown_report(report), encoding="utf-8")
        runs = report.get("runs", {"": report})
        for run, body in runs.items():
            name = f"{stem}-{_slug(run)}.png" if run else f"{stem}.png"
            if plot_report(body, tmp / name) is not None:
                names["plot" + (f":{run}" if run else "")] = name
    return {kind: out / name for kind, name in names.items()}


def report_json(report: dict[str, Any]) -> str:
    """Indented JSON, except long lists of numbers (per-user ranks), kept on one line each: an
    indent per element would make a report of 9,000 users tens of megabytes."""
    compact: list[str] = []

    def fold(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fold(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if len(value) > 16 and all(isinstance(v, (int, float)) for v in value):
                compact.append(json.dumps(list(value), separators=(",", ":"), default=jsonable))
                return f"\x00{len(compact) - 1}\x00"
            return [fold(v) for v in value]
        return value

    text = json.dumps(fold(report), indent=2, default=jsonable)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: compact[int(m.group(1))], text) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "run"
