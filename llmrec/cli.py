"""The ``llmrec`` command line.

The options of ``candidates``, ``recommend``, ``evaluate`` and ``finetune`` are generated from
the fields of their config dataclasses (:mod:`llmrec.config`), so defaults and help live in
one place. ``--config FILE`` (YAML) sets values; options the user typed override it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from llmrec.config import (
    DataConfig,
    RecommendConfig,
    RetrieverConfig,
    Settings,
    load_config,
    load_recommend_config,
)
from llmrec.errors import LlmrecError
from llmrec.evaluation.config import EvalConfig
from llmrec.finetune.config import FinetuneConfig

EXPECTED_ERRORS = (LlmrecError, FileNotFoundError, ImportError)

ALIASES = {
    "num_candidates": ["--k", "--candidate-k", "--n-candidates"],
    "retriever": ["--method"],
    "target": ["--domain"],
    "source": ["--cold-start-source"],
    "adapter": ["--from-adapter"],
}
"""Older or shorter flag names accepted for a field."""


@dataclasses.dataclass(kw_only=True)
class CandidatesConfig(RetrieverConfig, DataConfig):
    """``llmrec candidates``: one generator's top list (``target`` restricts it to a domain)."""


def _option(f: dataclasses.Field, hint: Any) -> Callable:
    """A click option for config field ``f`` (no default: an untyped option leaves the field be)."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    help_text = f"{f.metadata.get('help', '')}  [default: {'none' if shown is None else shown}]"
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
    if base is bool:
        if f.name.startswith("no_"):
            return click.option(flag, f.name, is_flag=True, default=None, help=help_text)
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    if typing.get_origin(base) is typing.Literal:
        click_type: Any = click.Choice(typing.get_args(base))
    else:
        click_type = {int: click.INT, float: click.FLOAT}.get(base, click.STRING)
    names = [flag, *ALIASES.get(f.name, [])]
    return click.option(*names, f.name, type=click_type, default=None, help=help_text)


def config_options(cls: type[Settings], only: Sequence[str] = (), positional: Sequence[str] = ("dataset",)):
    """Decorate a command with one option per field of ``cls`` (mappings are YAML-only),
    ``--config FILE``, and the ``positional`` fields as optional arguments."""
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):  # type: ignore[arg-type]
            hint, args = typing.get_origin(hints[f.name]), typing.get_args(hints[f.name])
            yaml_only = (
                f.metadata.get("yaml_only")
                or (hint is dict and args != (str, str))
                or (hint is list and typing.get_origin(args[0]) is dict)
            )
            if (only and f.name not in only) or yaml_only:
                continue
            if f.name in positional:
                func = click.argument(f.name, required=False, metavar=f"[{f.name.upper()}]")(func)
            else:
                func = _option(f, hints[f.name])(func)
        return click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="YAML file of settings (these options' names); options typed here override it.",
        )(func)

    return decorate


def typed(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The settings the user actually gave on the command line."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in values.items() if v is not None and ctx.get_parameter_source(k) in given}


def build(cls: type[Settings], ctx: click.Context, config_file: Path | None, values: dict[str, Any]):
    """Defaults < ``--config`` < typed options; errors exit 2 with the message."""
    return run(lambda: load_config(cls, config_file, typed(ctx, values)))


def build_recommend(ctx: click.Context, config_file: Path | None, values: dict[str, Any]) -> RecommendConfig:
    """As :func:`build` for RecommendConfig, skipping the file's ``service:`` section (the
    settings of ``llmrec serve``, :func:`~llmrec.config.load_recommend_config`), so one config
    file drives both commands."""
    return run(lambda: load_recommend_config(config_file, typed(ctx, values))[0])


def fail(message: object) -> typing.NoReturn:
    """Print ``message`` as an error and exit with code 2."""
    click.secho(f"error: {message}", fg="red", err=True)
    raise click.exceptions.Exit(2)


def run(step: Callable[[], Any]) -> Any:
    """Run ``step``; an expected error becomes one message on stderr and exit code 2."""
    try:
        return step()
    except EXPECTED_ERRORS as err:
        fail(err)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


verbose_option = click.option("--verbose", "-v", is_flag=True, help="Log progress details.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
user_option = click.option("--user", help="A known user id of the dataset.")
history_option = click.option("--history", help="A new user's history as free text, titles separated by ';'.")


def batch_options(out_help: str) -> Callable[[Callable], Callable]:
    """What `batch` and `ray-batch` take alike: INPUT, the settings of `recommend`, -n, --out,
    --chunk-size and --summary."""
    decorators = [
        click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path)),
        config_options(
            RecommendConfig,
            only=[f.name for f in dataclasses.fields(RecommendConfig) if f.name != "n"],
            positional=(),
        ),
        click.option("-n", "--n", "n", type=click.INT, help="Length of each ranked list.  [default: 10]"),
        click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=out_help),
        click.option(
            "--chunk-size",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Rows per chunk: one LLM scoring call and one file each.",
        ),
        click.option(
            "--summary",
            "summary_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also write the summary here (JSON).",
        ),
    ]

    def decorate(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate


def report_summary(summary: Any, summary_path: Path | None) -> None:
    """Write a job's summary to ``summary_path`` (JSON, atomic) when given; print its line."""
    from llmrec.io import atomic_write_json

    if summary_path is not None:
        run(lambda: atomic_write_json(summary_path, summary.to_dict()))
    click.echo(summary.line())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def app() -> None:
    """llmrec: candidate generation, LLM reranking, instruction tuning and offline evaluation."""


@app.command()
@config_options(DataConfig, only=("dataset", "format", "columns", "only_domain", "k_core", "min_rating"))
@click.option(
    "--save", type=click.Path(file_okay=False, path_type=Path), help="Write the cleaned tables here."
)
@json_option
@verbose_option
@click.pass_context
def data(ctx, config_file, save, as_json, verbose, **values) -> None:
    """Load and clean a dataset and print its statistics, before and after cleaning."""
    from llmrec.data import CleaningConfig, clean
    from llmrec.pipeline import load_data

    _setup_logging(verbose)
    cfg = build(DataConfig, ctx, config_file, values)
    raw = run(lambda: load_data(cfg))
    cleaned = run(lambda: clean(raw, CleaningConfig(k_core=cfg.k_core, min_rating=cfg.min_rating)))
    out = {"raw": raw.stats(), "cleaned": cleaned.stats(), "log": cleaned.log}
    if save is not None:
        run(lambda: cleaned.save(save))
        out["saved_to"] = str(save)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for label in ("raw", "cleaned"):
        s = out[label]
        click.echo(
            f"{label:8s} users {s['users']:>8,}  items {s['items_interacted']:>8,}  "
            f"interactions {s['interactions']:>10,}  density {s['density']:.5f}"
        )
        for dom, d in s["domains"].items():
            click.echo(
                f"{'':8s} domain {dom}: {d['users']:,} users, {d['items']:,} items, "
                f"{d['interactions']:,} rows"
            )
    click.echo("cleaning log:")
    for line in cleaned.log:
        click.echo(f"  - {line}")
    if save is not None:
        click.echo(f"saved to {save}")


def _retriever_and_history(cfg: Any, user: str | None, history: str | None, need_history: bool = True):
    """The fitted (or loaded) retriever of ``cfg`` and the History of --user or --history."""
    from llmrec.candidates.base import TrainData
    from llmrec.data import History, ItemCatalog
    from llmrec.data.catalog import split_titles
    from llmrec.data.split import user_sequences
    from llmrec.pipeline import build_retriever, prepare_data

    if need_history and (user is None) == (history is None):
        raise LlmrecError("give exactly one of --user ID or --history 'title; title; ...'")
    saved = getattr(cfg, "retriever_dir", None)
    users = seqs = None
    if not saved or user is not None:
        cleaned = prepare_data(cfg)
        catalog = ItemCatalog.from_dataset(cleaned)
        users, seqs = user_sequences(cleaned, catalog, order=cfg.order)
    retriever = build_retriever(cfg, None if saved else TrainData(catalog, seqs))
    hist = None
    if user is not None:
        pos = {u: i for i, u in enumerate(users.tolist())}
        if user not in pos:
            raise LlmrecError(
                f"user {user!r} not found in {cfg.dataset} (after {cfg.k_core}-core); e.g. {users[0]!r}"
            )
        hist = History(items=seqs[pos[user]])
    elif history is not None:
        titles = split_titles(history)
        hist = History.from_titles(titles, retriever.catalog)
        unmatched = split_titles(hist.text)
        if unmatched:
            click.echo(
                f"note: {len(unmatched)} of {len(titles)} titles not in the catalog (used as text): "
                + "; ".join(unmatched),
                err=True,
            )
    return retriever, hist


@app.command()
@config_options(CandidatesConfig)
@user_option
@history_option
@click.option(
    "--save", type=click.Path(file_okay=False, path_type=Path), help="Save the fitted retriever here."
)
@json_option
@verbose_option
@click.pass_context
def candidates(ctx, config_file, user, history, save, as_json, verbose, **values) -> None:
    """Top-k candidates for a known user (--user) or a typed history (--history); --save keeps
    the fitted retriever for `recommend --retriever-dir`."""
    _setup_logging(verbose)
    cfg = build(CandidatesConfig, ctx, config_file, values)
    gen, hist = run(lambda: _retriever_and_history(cfg, user, history, need_history=save is None))
    if save is not None:
        run(lambda: gen.save(save))
        click.echo(f"retriever {cfg.retriever} saved to {save}")
        if hist is None:
            return
    catalog = gen.catalog
    result = run(
        lambda: gen.candidates([hist], k=cfg.num_candidates, allowed=catalog.domain_mask(cfg.target))
    )
    rows: list[dict[str, Any]] = [
        {"rank": r + 1, "item_id": str(catalog.item_ids[i]), "title": catalog.titles[i], "score": float(s)}
        for r, (i, s) in enumerate(zip(result.items[0], result.scores[0]))
        if i >= 0
    ]
    payload = {
        "method": cfg.retriever,
        "user": user,
        "history": [catalog.titles[i] for i in hist.items[-10:]],
        "history_text": hist.text or None,
        "popularity_fallback": bool(result.fallback[0]),
        "candidates": rows,
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    click.echo(f"history ({len(hist.items)} known items, last shown): {payload['history']}")
    if payload["popularity_fallback"]:
        click.echo("no usable history for this method: showing the most popular items")
    for row in rows:
        click.echo(f"{row['rank']:>3}. {row['title']}  [{row['item_id']}]  {row['score']:.4f}")


@app.command()
@config_options(RecommendConfig)
@user_option
@history_option
@json_option
@verbose_option
@click.pass_context
def recommend(ctx, config_file, user, history, as_json, verbose, **values) -> None:
    """Ranked list for a known user or a typed history: candidates, then the LLM reranks them."""
    from llmrec.llm.reranker import RerankParams
    from llmrec.pipeline import Recommender, build_reranker, history_titles

    _setup_logging(verbose)
    cfg = build_recommend(ctx, config_file, values)

    def rank():
        gen, hist = _retriever_and_history(cfg, user, history)
        reranker = None if cfg.no_llm else build_reranker(cfg)
        rec = Recommender(gen, reranker, cfg.num_candidates, cfg.retriever_weight)
        params = RerankParams(shuffles=cfg.shuffles, seed=cfg.seed, mode=cfg.mode, progress=False)
        allowed = gen.catalog.domain_mask(cfg.target)
        return gen, hist, rec.recommend([hist], n=cfg.n, params=params, allowed=allowed)[0]

    gen, hist, ranked = run(rank)
    payload = {
        "user": user,
        "history": history_titles(hist, gen.catalog),
        "retriever": cfg.retriever,
        "model": None if cfg.no_llm else cfg.model,
        **ranked.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    shown = payload["history"][-10:]
    click.echo(f"history ({len(payload['history'])} items, last {len(shown)}):")
    for title in shown:
        click.echo(f"    {title}")
    ranker = "the retriever " + cfg.retriever if cfg.no_llm else cfg.model
    click.echo(f"ranked by {ranker} (from {cfg.retriever} candidates):")
    for row in payload["items"]:
        click.echo(
            f"{row['rank']:>3}. {row['title']}  [{row['item_id']}]  score {row['score']:.3f}  "
            f"(retriever #{row['retriever_rank']})"
        )


@app.command()
@batch_options("The ranked lists (Parquet); chunks and manifest go to OUT.parts/.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Keep the chunks a killed run of the same input and settings finished (--no-resume: recompute).",
)
@click.option("--overwrite", is_flag=True, help="Discard chunks or an output of another input or settings.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@verbose_option
@click.pass_context
def batch(
    ctx,
    input_path,
    config_file,
    out,
    chunk_size,
    resume,
    overwrite,
    summary_path,
    progress,
    verbose,
    **values,
) -> None:
    """Rank every row of INPUT (Parquet, CSV or JSONL: a known `user` or a typed `history`, and
    an optional `request_id`) as `recommend` would, in chunks written atomically; a killed run
    resumes where it stopped."""
    from llmrec.batch import BatchJob

    _setup_logging(verbose)
    cfg = build_recommend(ctx, config_file, values)
    job = run(lambda: BatchJob(input_path, out, cfg, chunk_size))
    report_summary(run(lambda: job.run(resume=resume, overwrite=overwrite, progress=progress)), summary_path)


@app.command("ray-batch")
@batch_options("The ranked lists (Parquet), in input order as `batch` writes them.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ranking actors.")
@click.option(
    "--cpus-per-worker",
    type=click.IntRange(min=1),
    help="CPUs (and torch threads) per actor.  [default: this machine's CPUs / workers]",
)
@click.option(
    "--address", help="An existing Ray cluster (e.g. 'auto'); default: a local one, stopped at the end."
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs per actor (each runs the config's backend, e.g. vllm, on them).",
)
@click.option(
    "--scoring",
    type=click.Choice(["engine", "staged", "ray-vllm"]),
    default="engine",
    show_default=True,
    help="engine: each actor ranks whole chunks; staged: prompts, scoring (the config's backend) "
    "and ordering as Ray Data stages; ray-vllm: the same with Ray's vLLM integration scoring "
    "(CUDA GPUs).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option("--progress/--no-progress", default=False, show_default=True, help="Ray Data's progress bars.")
@verbose_option
@click.pass_context
def ray_batch(
    ctx,
    input_path,
    config_file,
    out,
    workers,
    chunk_size,
    cpus_per_worker,
    address,
    gpus_per_worker,
    scoring,
    overwrite,
    summary_path,
    progress,
    verbose,
    **values,
) -> None:
    """`llmrec batch` on Ray Data: read INPUT, rank it in chunks on an actor pool of WORKERS,
    write OUT in input order (the rows `llmrec batch` writes). Needs `pip install 'llmrec[ray]'`."""
    from llmrec.ray_batch import RayBatchJob, import_ray

    _setup_logging(verbose)
    run(import_ray)
    cfg = build_recommend(ctx, config_file, values)
    job = run(
        lambda: RayBatchJob(
            input_path,
            out,
            cfg,
            workers,
            chunk_size,
            cpus_per_worker,
            address,
            gpus_per_worker=gpus_per_worker,
            scoring=scoring,
        )
    )
    report_summary(run(lambda: job.run(overwrite=overwrite, progress=progress)), summary_path)


@app.command()
@config_options(EvalConfig)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval/results/retrieval"),
    show_default=True,
    help="Folder for report.json, report.md and the plots (a suite: eval/results/<suite name>).",
)
@click.option(
    "--check",
    type=click.Path(file_okay=False, path_type=Path),
    help="A report folder this run must reproduce exactly (wall times and cache hits aside): exit 1 if not.",
)
@verbose_option
@click.pass_context
def evaluate(ctx, config_file, out, check, verbose, **values) -> None:
    """Leave-one-out evaluation of the generators (and the LLM stage) against all items.

    DATASET may be a suite file (eval/*.yaml): every run it names goes into one report, and
    typed options override the suite's settings."""
    import json as _json

    from llmrec.evaluation.experiment import run_evaluation
    from llmrec.evaluation.report import check_writable, markdown_report, write_report
    from llmrec.evaluation.suite import differences, is_suite_file, load_suite, run_suite

    _setup_logging(verbose)
    suite_file = values.get("dataset") if is_suite_file(values.get("dataset")) else None
    if suite_file is not None:
        overrides = {k: v for k, v in typed(ctx, values).items() if k != "dataset"}
        if config_file is not None:
            fail("give a suite file or --config, not both")
        suite = run(lambda: load_suite(suite_file, overrides))
        out = (
            out
            if ctx.get_parameter_source("out") == ParameterSource.COMMANDLINE
            else Path("eval/results", suite.name)
        )
    else:
        cfg = build(EvalConfig, ctx, config_file, values)
    reference = None
    if check is not None:
        reference = run(lambda: _read_report(check))
    run(lambda: check_writable(out))
    report = run(lambda: run_suite(suite) if suite_file is not None else run_evaluation(cfg))
    paths = run(lambda: write_report(report, out))
    click.echo(markdown_report(report))
    click.echo("written: " + ", ".join(str(p) for p in paths.values()))
    if reference is not None:
        written = _json.loads(paths["json"].read_text(encoding="utf-8"))
        diff = differences(written, reference)
        if diff:
            click.secho(f"differs from {check}/report.json:", fg="red", err=True)
            for line in diff:
                click.echo(f"  {line}", err=True)
            raise click.exceptions.Exit(1)
        click.echo(f"identical to {check}/report.json (wall times and cache hits aside)")


def _read_report(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise LlmrecError(f"--check: no report.json in {folder}")
    return json.loads(path.read_text(encoding="utf-8"))


@app.command()
@config_options(FinetuneConfig, positional=())
@verbose_option
@click.pass_context
def finetune(ctx, config_file, verbose, **values) -> None:
    """Instruction-tune the reranker (QLoRA by default) on a dataset's training histories."""
    from llmrec.finetune.run import run_finetune

    _setup_logging(verbose)
    cfg = build(FinetuneConfig, ctx, config_file, values)
    adapter = run(lambda: run_finetune(cfg))
    click.echo(f"adapter: {adapter}")


@app.command()
@config_options(RecommendConfig)
@click.option("--host", help="Address to listen on (overrides service.host; loopback by default).")
@click.option("--port", type=click.INT, help="TCP port (overrides service.port).")
@verbose_option
@click.pass_context
def serve(ctx, config_file, host, port, verbose, **values) -> None:
    """HTTP recommendation service: the same ranking as `recommend`, settings from --config
    (plus its `service:` section and $LLMREC_SERVICE_* variables); Ctrl-C stops it."""
    from llmrec.service import build_parts, check_bind, create_app_from_parts, load_service_config
    from llmrec.service import serve as run_service

    _setup_logging(verbose)
    cfg, settings = run(
        lambda: load_service_config(config_file, typed(ctx, values), {"host": host, "port": port})
    )
    run(lambda: check_bind(settings))  # before any data or model loads
    parts = run(lambda: build_parts(cfg, settings.adapters))
    service = create_app_from_parts(parts, settings)
    auth = "bearer token required" if settings.api_key else "no API key (loopback only)"
    click.echo(
        f"llmrec service on http://{settings.host}:{settings.port} ({auth}); "
        f"ranking {cfg.retriever} candidates with {'no LLM' if cfg.no_llm else cfg.model}"
    )
    run(lambda: run_service(service, settings))


@app.command("serve-model")
@click.option(
    "--model", default="smollm2-135m-instruct", show_default=True, help="Hub id, folder or offline name."
)
@click.option("--lora", multiple=True, help="NAME=ADAPTER_FOLDER, repeatable: LoRA adapters served by name.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default)."
)
@click.option("--port", default=8000, show_default=True, help="TCP port.")
@click.option("--max-model-len", default=2048, show_default=True, help="Longest prompt + answer in tokens.")
@click.option(
    "--dtype", default="auto", show_default=True, help="auto (bf16 on GPU / native-bf16 CPUs, else fp32)."
)
@click.option(
    "--cpu-bind",
    default="all",
    show_default=True,
    help="CPU only: the cores vLLM computes on: all, auto (vLLM's: one core kept for its scheduler), "
    "nobind, or a list like 0-3.",
)
@verbose_option
def serve_model(model, lora, host, port, max_model_len, dtype, cpu_bind, verbose) -> None:
    """Start a local vLLM OpenAI-compatible server for `--backend vllm-server`; Ctrl-C stops it."""
    from llmrec.llm.vllm_server import VLLMServer

    _setup_logging(verbose)
    adapters: dict[str, str] = {}
    for spec in lora:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            fail(f"--lora must be NAME=ADAPTER_FOLDER, got {spec!r}")
        adapters[name] = path
    server = run(
        lambda: VLLMServer(
            model=model,
            adapters=adapters,
            host=host,
            port=port,
            max_model_len=max_model_len,
            dtype=dtype,
            cpu_bind=cpu_bind,
        )
    )
    run(server.start)
    click.echo(
        f"vLLM server ready at {server.base_url} (model {model!r}"
        + (f", adapters {sorted(adapters)}" if adapters else "")
        + f"); log: {server.log_file}"
    )
    click.echo(f"use it with: llmrec recommend --backend vllm-server --server-url {server.base_url} ...")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        click.echo("stopping the vLLM server")
    finally:
        server.stop()


def main() -> None:
    """Console entry point: expected errors exit 2 with one message (see :func:`run`); anything
    else is a bug, reported with the path of its full traceback."""
    # implicit (ALS) warns and slows down when OpenBLAS runs its own threads beside it; set
    # before numpy loads, for this process only (the library itself sets no environment).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        code = app(standalone_mode=False)
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except click.exceptions.Exit as err:
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        code = 130
    except Exception:  # noqa: BLE001 - the last line of defence: say it is a bug, keep the trace
        import tempfile
        import traceback

        fd, log = tempfile.mkstemp(prefix="llmrec-error-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            traceback.print_exc(file=handle)
        click.secho(
            f"internal error (a bug in llmrec, please report it): {traceback.format_exc(limit=0).strip()}",
            fg="red",
            err=True,
        )
        click.echo(f"full traceback: {log}", err=True)
        code = 1
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
