"""Learning-curve table and plot from a learning-curve suite's report.

Reranker names encode the point: ``"<start>, N <domain> users"`` or ``"<start> + N <domain>
users"`` (e.g. ``"arts-tuned + 64 office users"``), one curve per start. For every user group
of the run (warm, cold, ...), the table gives each point's NDCG@10 with its 95% CI and the
paired difference to the retriever; the plot draws NDCG@10 against the number of target-domain
users (symlog axis, so 0 is shown), one line per start, the retriever as a band.

    python eval/plot_curve.py eval/reports/arts-office-curve/report.json  # -> curve.png, curve.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from llmrec.io import atomic_write_figure, atomic_write_text

POINT = re.compile(r"^(?P<start>[\w-]+)(?:, | \+ )(?P<n>\d+) (?P<domain>\w+) users\b")


def parse_point(method: str, retriever: str) -> tuple[str, int] | None:
    """``(start, N)`` of a reranked row named ``"<retriever> + <reranker name>"``, else None."""
    prefix = f"{retriever} + "
    if not method.startswith(prefix):
        return None
    m = POINT.match(method[len(prefix) :])
    return (m["start"], int(m["n"])) if m else None


def curve_rows(report: dict, metric: str = "ndcg@10") -> tuple[str, list[dict]]:
    """The retriever's name and one row per (group, start, N), sorted, with mean, CI and the
    paired difference to the retriever."""
    (run,) = report["runs"].values()  # a learning-curve suite has one run
    retriever = run["config"]["retriever"]
    diffs = {
        (c["slice"], c["method"]): c
        for c in run["comparisons"]
        if c["metric"] == metric and c["baseline"] == retriever
    }
    rows = []
    for r in run["rows"]:
        if r["metric"] != metric:
            continue
        point = parse_point(r["method"], retriever)
        if r["method"] == retriever:
            point = ("retriever", -1)
        if point is None:
            continue
        d = diffs.get((r["slice"], r["method"]))
        rows.append(
            {
                "group": r["slice"],
                "start": point[0],
                "n": point[1],
                "users": r["users"],
                "mean": r["mean"],
                "ci": (r["ci_low"], r["ci_high"]),
                "diff": None if d is None else (d["diff"], d["ci_low"], d["ci_high"], d["p_value"]),
            }
        )
    return retriever, sorted(rows, key=lambda x: (x["group"], x["start"] != "retriever", x["start"], x["n"]))


def table(retriever: str, rows: list[dict], metric: str = "ndcg@10") -> str:
    """Markdown: one line per group and point."""
    lines = [
        f"| users | start | target-domain users tuned on | {metric.upper()} [95% CI] "
        f"| paired difference vs {retriever} [95% CI] | p |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = "-" if r["n"] < 0 else str(r["n"])
        start = retriever if r["start"] == "retriever" else r["start"]
        d = r["diff"]
        if d is None:
            diff = "-"
        else:
            bold = "**" if d[1] > 0 or d[2] < 0 else ""  # the CI excludes 0
            diff = f"{bold}{d[0]:+.4f}{bold} [{d[1]:+.4f}, {d[2]:+.4f}]"
        p = "-" if d is None else f"{d[3]:.3f}"
        cells = [
            f"{r['group']} ({r['users']})",
            start,
            n,
            f"{r['mean']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]",
            diff,
            p,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nbold = the paired CI excludes 0.\n"


def plot(retriever: str, rows: list[dict], out: Path, metric: str = "ndcg@10") -> None:
    """One panel per group: each start's curve with CI bars, the retriever as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        mine = [r for r in rows if r["group"] == group]
        xs = [r["n"] for r in mine if r["n"] >= 0]
        for r in mine:
            if r["start"] == "retriever":
                ax.axhspan(*r["ci"], color="grey", alpha=0.2)
                ax.axhline(r["mean"], color="grey", ls="--", label=f"{retriever} (retriever)")
        for start in sorted({r["start"] for r in mine} - {"retriever"}):
            pts = [r for r in mine if r["start"] == start]
            ax.errorbar(
                [r["n"] for r in pts],
                [r["mean"] for r in pts],
                yerr=[[r["mean"] - r["ci"][0] for r in pts], [r["ci"][1] - r["mean"] for r in pts]],
                marker="o",
                capsize=3,
                label=f"from {start}",
            )
        ax.set_xscale("symlog", linthresh=16)
        ax.set_xticks(sorted(set(xs)))
        ax.set_xticklabels([str(x) for x in sorted(set(xs))])
        ax.set_xlabel("target-domain users tuned on")
        ax.set_ylabel(f"{metric.upper()} (95% CI)")
        ax.set_title(f"{group} users ({mine[0]['users']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_figure(out, fig)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.json of a learning-curve suite")
    parser.add_argument("--out", type=Path, help="PNG to write (default: curve.png beside the report)")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, json.JSONDecodeError) as err:
        parser.error(f"cannot read the report {args.report}: {err}")
    retriever, rows = curve_rows(report, args.metric)
    if not any(r["start"] != "retriever" for r in rows):
        parser.error(f"{args.report}: no reranker named '<start> + N <domain> users'")
    out = args.out or args.report.with_name("curve.png")
    text = table(retriever, rows, args.metric)
    print(text)
    atomic_write_text(out.with_suffix(".md"), text)
    plot(retriever, rows, out, args.metric)
    print(f"written: {out}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
