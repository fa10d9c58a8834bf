"""The ``llmrec`` command line: ``data``, ``candidates``, ``evaluate``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

# implicit warns (and slows down) when OpenBLAS runs its own threads beside it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = typer.Typer(
    help="llmrec: candidate generation, LLM reranking and offline evaluation for recommendation.",
    no_args_is_help=True,
    add_completion=False,
)

DatasetArg = Annotated[
    str,
    typer.Argument(
        help="Dataset folder (MovieLens, Amazon-2023 JSONL, RecBole, CSV/Parquet) or 'ml-latest-small'."
    ),
]
KCore = Annotated[int, typer.Option(help="Iterative k-core on users and items (0 = off).")]
MinRating = Annotated[float | None, typer.Option(help="Keep interactions with rating >= this.")]
Backend = Annotated[
    str,
    typer.Option(help="LLM engine: transformers, vllm (in-process) or vllm-server (see serve-model)."),
]
ServerUrl = Annotated[
    str | None,
    typer.Option(help="vllm-server backend: the server's base URL (default http://127.0.0.1:8000/v1)."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def data(
    dataset: DatasetArg = "ml-latest-small",
    k_core: KCore = 5,
    min_rating: MinRating = None,
    save: Annotated[
        Path | None, typer.Option(help="Write the cleaned tables (Arrow) to this folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Load and clean a dataset and print its statistics, before and after cleaning."""
    from llmrec.data import CleaningConfig, clean, load_dataset
    from llmrec.errors import LlmrecError

    _setup_logging(verbose)
    try:
        raw = load_dataset(dataset)
        cleaned = clean(raw, CleaningConfig(k_core=k_core, min_rating=min_rating))
    except (LlmrecError, FileNotFoundError) as err:
        _fail(err)
    out = {"raw": raw.stats(), "cleaned": cleaned.stats(), "log": cleaned.log}
    if save is not None:
        cleaned.save(save)
        out["saved_to"] = str(save)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for label in ("raw", "cleaned"):
        s = out[label]
        typer.echo(
            f"{label:8s} users {s['users']:>8,}  items {s['items_interacted']:>8,}  "
            f"interactions {s['interactions']:>10,}  density {s['density']:.5f}"
        )
        for dom, d in s["domains"].items():
            typer.echo(
                f"{'':8s} domain {dom}: {d['users']:,} users, {d['items']:,} items, "
                f"{d['interactions']:,} rows"
            )
    typer.echo("cleaning log:")
    for line in cleaned.log:
        typer.echo(f"  - {line}")
    if save is not None:
        typer.echo(f"saved to {save}")


def _generator_and_history(
    dataset: str, user: str | None, history: str | None, method: str, k_core: int, seed: int
):
    """Fit ``method`` on every interaction of ``dataset``; the History of --user or --history."""
    from llmrec.candidates.base import TrainData
    from llmrec.data import CleaningConfig, History, ItemCatalog, clean, load_dataset
    from llmrec.data.split import user_sequences
    from llmrec.errors import LlmrecError
    from llmrec.evaluation.experiment import build_generator

    if (user is None) == (history is None):
        raise LlmrecError("give exactly one of --user ID or --history 'title; title; ...'")
    cleaned = clean(load_dataset(dataset), CleaningConfig(k_core=k_core))
    catalog = ItemCatalog.from_dataset(cleaned)
    users, seqs = user_sequences(cleaned, catalog)
    if user is not None:
        pos = {u: i for i, u in enumerate(users.tolist())}
        if user not in pos:
            raise LlmrecError(
                f"user {user!r} not found in {dataset} (after {k_core}-core); e.g. {users[0]!r}"
            )
        hist = History(items=seqs[pos[user]])
    else:
        hist = History.from_titles([t.strip() for t in history.split(";") if t.strip()], catalog)
    return build_generator(method, {}, seed).fit(TrainData(catalog, seqs)), hist


@app.command()
def candidates(
    dataset: DatasetArg = "ml-latest-small",
    user: Annotated[str | None, typer.Option(help="A known user id of the dataset.")] = None,
    history: Annotated[
        str | None, typer.Option(help="A new user's history as free text, titles separated by ';'.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="Generator: popularity, bm25, itemknn, mf, ease, fused.")
    ] = "fused",
    k: Annotated[int, typer.Option(help="Number of candidates.")] = 20,
    domain: Annotated[str | None, typer.Option(help="Only recommend items of this domain.")] = None,
    k_core: KCore = 5,
    seed: Annotated[int, typer.Option(help="Seed of learned generators.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Top-k candidates for a known user (--user) or a typed history (--history)."""
    from llmrec.errors import LlmrecError

    _setup_logging(verbose)
    try:
        gen, hist = _generator_and_history(dataset, user, history, method, k_core, seed)
        catalog = gen.catalog
        result = gen.candidates([hist], k=k, allowed=catalog.domain_mask(domain))
    except (LlmrecError, KeyError, ValueError) as err:
        _fail(err)
    rows: list[dict[str, Any]] = [
        {"rank": r + 1, "item_id": str(catalog.item_ids[i]), "title": catalog.titles[i], "score": float(s)}
        for r, (i, s) in enumerate(zip(result.items[0], result.scores[0]))
        if i >= 0
    ]
    payload = {
        "method": method,
        "user": user,
        "history": [catalog.titles[i] for i in hist.items[-10:]],
        "history_text": hist.text or None,
        "popularity_fallback": bool(result.fallback[0]),
        "candidates": rows,
    }
    if as_json:
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    typer.echo(f"history ({len(hist.items)} known items, last shown): {payload['history']}")
    if payload["popularity_fallback"]:
        typer.echo("no usable history for this method: showing the most popular items")
    for row in rows:
        typer.echo(f"{row['rank']:>3}. {row['title']}  [{row['item_id']}]  {row['score']:.4f}")


@app.command()
def recommend(
    dataset: DatasetArg = "ml-latest-small",
    user: Annotated[str | None, typer.Option(help="A known user id of the dataset.")] = None,
    history: Annotated[
        str | None, typer.Option(help="A new user's history as free text, titles separated by ';'.")
    ] = None,
    n: Annotated[int, typer.Option(help="Length of the ranked list.")] = 10,
    retriever: Annotated[str, typer.Option(help="Candidate generator whose list the LLM reranks.")] = "fused",
    num_candidates: Annotated[int, typer.Option(help="Candidates handed to the LLM (<= labels).")] = 20,
    model: Annotated[str, typer.Option(help="Hub id, local folder, or 'smollm2-135m-instruct'.")] = (
        "smollm2-135m-instruct"
    ),
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter folder for the model.")] = None,
    quantization: Annotated[str, typer.Option(help="none, 4bit or 8bit (bitsandbytes).")] = "none",
    backend: Backend = "transformers",
    server_url: ServerUrl = None,
    template: Annotated[str, typer.Option(help="Prompt template name in prompts/ or a .jinja path.")] = (
        "listwise"
    ),
    shuffles: Annotated[int, typer.Option(help="Average over N shuffled candidate orders (0 = off).")] = 0,
    retriever_weight: Annotated[
        float, typer.Option(help="Fuse the LLM scores with the retriever order (0 = LLM alone).")
    ] = 0.0,
    mode: Annotated[str, typer.Option(help="verbalizer (one forward pass) or generate.")] = "verbalizer",
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Skip the LLM: the retriever's list.")] = False,
    k_core: KCore = 5,
    seed: Annotated[int, typer.Option(help="Seed for learned generators and shuffles.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ranked list for a known user or a typed history: candidates, then the LLM reranks them."""
    from llmrec.errors import LlmrecError
    from llmrec.llm import load_reranker
    from llmrec.llm.reranker import RerankParams
    from llmrec.pipeline import Recommender, history_titles

    _setup_logging(verbose)
    try:
        gen, hist = _generator_and_history(dataset, user, history, retriever, k_core, seed)
        reranker = None
        if not no_llm:
            reranker = load_reranker(
                model,
                backend=backend,
                server_url=server_url,
                template=template,
                adapter=adapter,
                quantization=quantization,
            )
        rec = Recommender(gen, reranker, num_candidates=num_candidates)
        params = RerankParams(
            shuffles=shuffles,
            seed=seed,
            mode=mode,  # type: ignore[arg-type]
            progress=False,
            retriever_weight=retriever_weight,
        )
        ranked = rec.recommend([hist], n=n, params=params)[0]
    except (LlmrecError, KeyError, ValueError, ImportError) as err:
        _fail(err)
    payload = {
        "user": user,
        "history": history_titles(hist, gen.catalog),
        "retriever": retriever,
        "model": None if no_llm else model,
        **ranked.to_dict(),
    }
    if as_json:
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    shown = payload["history"][-10:]
    typer.echo(f"history ({len(payload['history'])} items, last {len(shown)}):")
    for title in shown:
        typer.echo(f"    {title}")
    typer.echo(
        f"ranked by {'the retriever ' + retriever if no_llm else model} (from {retriever} candidates):"
    )
    for row in payload["items"]:
        typer.echo(
            f"{row['rank']:>3}. {row['title']}  [{row['item_id']}]  score {row['score']:.3f}  "
            f"(retriever #{row['retriever_rank']})"
        )


@app.command()
def evaluate(
    dataset: DatasetArg = "ml-latest-small",
    methods: Annotated[
        str, typer.Option(help="Comma-separated generators to evaluate.")
    ] = "popularity,bm25,itemknn,mf,ease,fused",
    stage: Annotated[str, typer.Option(help="'test' (history = train + valid) or 'valid'.")] = "test",
    source: Annotated[str | None, typer.Option(help="Cross-domain: source domain (e.g. arts).")] = None,
    target: Annotated[str | None, typer.Option(help="Cross-domain: target domain (e.g. office).")] = None,
    cold_fraction: Annotated[float, typer.Option(help="Cross-domain: share of users made cold-start.")] = 0.2,
    k_core: KCore = 5,
    min_rating: MinRating = None,
    candidate_k: Annotated[int, typer.Option(help="Depth of the candidate lists (reranker input).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed for learned generators and the cold-start user draw.")] = 0,
    rerank: Annotated[bool, typer.Option("--rerank", help="Also evaluate the LLM reranking stage.")] = False,
    retriever: Annotated[str, typer.Option(help="Rerank this generator's candidate lists.")] = "fused",
    model: Annotated[str, typer.Option(help="Reranker model: Hub id, folder or offline name.")] = (
        "smollm2-135m-instruct"
    ),
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter folder for the model.")] = None,
    quantization: Annotated[str, typer.Option(help="none, 4bit or 8bit (bitsandbytes).")] = "none",
    backend: Backend = "transformers",
    server_url: ServerUrl = None,
    template: Annotated[str, typer.Option(help="Prompt template of the reranker.")] = "listwise",
    shuffles: Annotated[
        str,
        typer.Option(help="Comma-separated reranker variants: 0 = retriever order, N = mean of N shuffles."),
    ] = "0",
    max_users: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of users.")] = None,
    fusion_weights: Annotated[
        str,
        typer.Option(
            help="Comma-separated weights of the retriever order fused with the LLM scores; the best "
            "(or 0 = LLM alone) on the same users' validation items is applied. Empty = off."
        ),
    ] = "",
    config: Annotated[
        Path | None, typer.Option(help="YAML with EvalConfig fields (e.g. generator_params); flags win.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and report.png.")] = Path(
        "eval/results/retrieval"
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Leave-one-out evaluation of the candidate generators against all items; writes a report."""
    from llmrec.errors import LlmrecError
    from llmrec.evaluation.experiment import EvalConfig, run_evaluation
    from llmrec.evaluation.report import markdown_report, write_report

    _setup_logging(verbose)
    fields: dict[str, Any] = {}
    if config is not None:
        import yaml

        fields.update(yaml.safe_load(config.read_text(encoding="utf-8")) or {})
    fields.update(
        dataset=dataset,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        stage=stage,
        source=source,
        target=target,
        cold_fraction=cold_fraction,
        k_core=k_core,
        min_rating=min_rating,
        candidate_k=candidate_k,
        seed=seed,
        rerank=rerank,
        retriever=retriever,
        model=model,
        adapter=adapter,
        quantization=quantization,
        backend=backend,
        server_url=server_url,
        template=template,
        shuffles=[int(x) for x in shuffles.split(",") if x.strip()],
        max_users=max_users,
    )
    if fusion_weights.strip():
        try:
            fields["fusion_weights"] = [float(x) for x in fusion_weights.split(",") if x.strip()]
        except ValueError:
            _fail(ValueError(f"--fusion-weights must be comma-separated numbers, got {fusion_weights!r}"))
    try:
        cfg = EvalConfig(**fields)
        report = run_evaluation(cfg)
    except (LlmrecError, TypeError, ImportError) as err:
        _fail(err)
    paths = write_report(report, out)
    typer.echo(markdown_report(report))
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()))


@app.command()
def finetune(
    config: Annotated[Path | None, typer.Option(help="Recipe YAML (see finetune/*.yaml).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Training data folder or 'ml-latest-small'.")] = None,
    domain: Annotated[str | None, typer.Option(help="Tune on this domain only (e.g. arts).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model: Hub id, folder or offline name.")] = None,
    from_adapter: Annotated[str | None, typer.Option(help="Start from this adapter (transfer).")] = None,
    train_users: Annotated[int | None, typer.Option(help="Few-shot: a seeded sample of N users.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Run folder (checkpoints, adapter, manifest).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of data sampling and training.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Instruction-tune the reranker (QLoRA by default) on a dataset's training histories."""
    from llmrec.errors import LlmrecError
    from llmrec.finetune.config import FinetuneConfig
    from llmrec.finetune.run import run_finetune

    _setup_logging(verbose)
    overrides = {
        "dataset": dataset,
        "domain": domain,
        "model": model,
        "from_adapter": from_adapter,
        "train_users": train_users,
        "max_steps": max_steps,
        "output_dir": output_dir,
        "seed": seed,
    }
    try:
        cfg = FinetuneConfig.from_yaml(config) if config is not None else FinetuneConfig()
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        cfg.resume = cfg.resume or resume
        cfg.__post_init__()  # re-validate after the flag overrides
        adapter = run_finetune(cfg)
    except (LlmrecError, ImportError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"adapter: {adapter}")


def main() -> None:
    """Console entry point."""
    app()


@app.command("serve-model")
def serve_model(
    model: Annotated[str, typer.Option(help="Hub id, local folder, or 'smollm2-135m-instruct'.")] = (
        "smollm2-135m-instruct"
    ),
    lora: Annotated[
        list[str] | None,
        typer.Option(help="NAME=ADAPTER_FOLDER, repeatable: LoRA adapters served by name (one per domain)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_model_len: Annotated[int, typer.Option(help="Longest prompt + answer in tokens.")] = 2048,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU / native-bf16 CPUs, else float32).")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a local vLLM OpenAI-compatible server for `--backend vllm-server`; Ctrl-C stops it."""
    from llmrec.errors import LlmrecError
    from llmrec.llm.vllm_server import VLLMServer

    _setup_logging(verbose)
    adapters: dict[str, str] = {}
    for spec in lora or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            _fail(ValueError(f"--lora must be NAME=ADAPTER_FOLDER, got {spec!r}"))
        adapters[name] = path
    server = VLLMServer(
        model=model, adapters=adapters, host=host, port=port, max_model_len=max_model_len, dtype=dtype
    )
    try:
        server.start()
    except (LlmrecError, ImportError) as err:
        _fail(err)
    typer.echo(
        f"vLLM server ready at {server.base_url} (model {model!r}"
        + (f", adapters {sorted(adapters)}" if adapters else "")
        + f"); log: {server.log_file}"
    )
    typer.echo(f"use it with: llmrec recommend --backend vllm-server --server-url {server.base_url} ...")
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        typer.echo("stopping the vLLM server")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
