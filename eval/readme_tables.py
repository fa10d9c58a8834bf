"""Write the README's result tables from the committed suite reports (eval/reports/*/report.json).

Each table sits between ``<!-- report:SUITE[:RUN[:GROUP]][; columns=METRIC,...] -->`` (or
``<!-- report:file:NAME.md -->``, a table an experiment script wrote there) and ``<!-- /report -->`` in the
README; this script replaces what is between the markers with a table generated from the
report, so no result in the README is typed by hand.

    python eval/readme_tables.py            # rewrite README.md
    python eval/readme_tables.py --check    # exit 1 if README.md is out of date (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- report:(?P<spec>[^\n]+?) -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL)
COLUMNS = ("ndcg@10", "recall@10")
"""The metrics shown with their CIs unless the marker names others (``; columns=ndcg@10,recall@20``);
the paired difference is the first one's."""
_LABELS = {"ndcg": "NDCG", "recall": "Recall", "mrr": "MRR"}


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return _LABELS.get(name, name) + (f"@{k}" if k else "")


def _ci(row: dict) -> str:
    return f"{row['mean']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"


def _diff(c: dict | None) -> str:
    if c is None:
        return "-"
    mark = "**" if c["ci_low"] > 0 or c["ci_high"] < 0 else ""
    return f"{mark}{c['diff']:+.4f}{mark} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] vs {c['baseline']}"


def table(reports: Path, spec: str) -> str:
    """The Markdown table of ``SUITE[:RUN[:GROUP]]`` (run default: the only run; group: all;
    ``; columns=...``: the metrics with CIs, default :data:`COLUMNS`), or ``file:NAME.md``: a
    table an experiment script wrote into the reports folder."""
    if spec.startswith("file:"):
        return (reports / spec[len("file:") :]).read_text(encoding="utf-8")
    spec, _, names = spec.partition("; columns=")
    columns = tuple(c.strip() for c in names.split(",") if c.strip()) or COLUMNS
    suite, _, rest = spec.partition(":")
    run_name, _, group = rest.partition(":")
    report = json.loads((reports / suite / "report.json").read_text(encoding="utf-8"))
    runs = report["runs"]
    run_name = run_name or next(iter(runs))
    body = runs[run_name]
    group = group or next(iter(body["groups"]))
    rows = {(r["method"], r["metric"]): r for r in body["rows"] if r["slice"] == group}
    comps = {(c["method"], c["metric"]): c for c in body["comparisons"] if c["slice"] == group}
    methods = list(dict.fromkeys(m for m, _ in rows))
    cand = f"cand_recall@{body['config']['num_candidates']}"
    head = ["method", *(f"{_label(c)} [95% CI]" for c in columns)]
    head.append(f"{_label(columns[0])} paired difference [95% CI]")
    lines = [
        "| " + " | ".join(head) + f" | cand. Recall@{cand.split('@')[1]} |",
        "|---|" + "---:|" * (len(head)),
    ]
    for m in methods:
        cells = [m, *(_ci(rows[(m, c)]) for c in columns), _diff(comps.get((m, columns[0])))]
        cells.append(f"{rows[(m, cand)]['mean']:.4f}" if (m, cand) in rows else "-")
        lines.append("| " + " | ".join(cells) + " |")
    users = next(iter(rows.values()))["users"] if rows else 0
    source = f"eval/reports/{suite}/report.md"
    lines.append(f"\n{users} users ({group}); bold = the paired CI excludes 0; from `{source}`.\n")
    return "\n".join(lines)


def render(readme: str, reports: Path) -> str:
    """``readme`` with every marked table regenerated."""
    return MARKER.sub(lambda m: m.group(1) + table(reports, m.group("spec")) + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--reports", type=Path, default=REPO / "eval" / "reports")
    parser.add_argument("--check", action="store_true", help="Only check; exit 1 when out of date.")
    args = parser.parse_args(argv)
    current = args.readme.read_text(encoding="utf-8")
    fresh = render(current, args.reports)
    if args.check:
        if fresh != current:
            print(f"{args.readme} is out of date: run python eval/readme_tables.py", file=sys.stderr)
            return 1
        print(f"{args.readme}: tables match the reports")
        return 0
    if fresh != current:
        args.readme.write_text(fresh, encoding="utf-8")
    print(f"{args.readme}: {len(MARKER.findall(fresh))} tables from {args.reports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
