"""``llmrec finetune``: dataset -> split -> retriever -> examples -> QLoRA run -> adapter.

Reads top to bottom like trl's ``sft.py``: load, build, run, save. The retriever
that supplies hard negatives and the validation candidate lists is fit on the
validation-stage sequences (train items only), so neither validation nor test
items reach training in any form.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from datasets import Dataset

from llmrec.candidates import CandidateGenerator, TrainData, make_generator
from llmrec.data import cross_domain_split, leave_one_out
from llmrec.data.schema import RecDataset
from llmrec.data.split import LeaveOneOutSplit
from llmrec.finetune.config import FinetuneConfig
from llmrec.finetune.evaluation import LikelihoodEvaluator, RankingEvaluator
from llmrec.finetune.examples import build_examples, sample_users
from llmrec.finetune.histories import history_dataset
from llmrec.finetune.trainer import check_inputs, finetune
from llmrec.llm.likelihood import LikelihoodParams
from llmrec.llm.models import load_tokenizer, resolve_model
from llmrec.llm.prompting import PromptRenderer
from llmrec.pipeline import build_retriever, prepare_data

logger = logging.getLogger(__name__)


def run_finetune(config: FinetuneConfig) -> Path:
    """Tune the reranker on ``config.dataset`` (optionally one ``config.target`` domain); the
    adapter folder."""
    template = check_inputs(config).template  # fails before the data, retriever and model load
    data = prepare_data(config)
    split = leave_one_out(data, domain=config.target, order=config.order)
    retriever = build_retriever(config, TrainData(split.catalog, split.sequences("valid")))
    tokenizer = load_tokenizer(resolve_model(config.model))
    users = _training_users(data, split, config)
    if config.task == "history":
        return _run_history(config, split, retriever, tokenizer, users)
    renderer = PromptRenderer(template, tokenizer, config.max_prompt_tokens)
    examples = ranking_examples(config, split, retriever, renderer, users)
    logger.info("%d training examples from %s", len(examples), config.dataset)
    return finetune(config, examples, _evaluator(config, split, retriever, template))


def ranking_examples(
    config: FinetuneConfig,
    split: LeaveOneOutSplit,
    retriever: CandidateGenerator,
    renderer: PromptRenderer,
    users: np.ndarray | None = None,
) -> Dataset:
    """The ranking task's training examples as ``config`` builds them (candidates, order,
    windows, seed; with ``retriever_before_targets`` from a retriever fit without the targets),
    rendered by ``renderer``; ``retriever`` is the validation-stage one."""
    return build_examples(
        split,
        None,
        _example_retriever(split, retriever, config),
        renderer,
        num_candidates=config.num_candidates,
        hard_fraction=config.hard_fraction,
        windows=config.windows,
        candidate_order=config.candidate_order,
        users=users,
        seed=config.seed,
        allowed=split.catalog.domain_mask(config.target),
    )


def _run_history(
    config: FinetuneConfig,
    split: LeaveOneOutSplit,
    retriever: CandidateGenerator,
    tokenizer,
    users: np.ndarray | None,
) -> Path:
    """The history task: a causal LM on the users' training histories, evaluated by ranking the
    retriever's validation lists by likelihood."""
    dataset = history_dataset(
        split.train,
        split.catalog.titles,
        tokenizer,
        header=config.history_header,
        window=config.history_window,
        users=users,
    )
    logger.info("%d history texts from %s", len(dataset), config.dataset)
    return finetune(config, dataset, _evaluator(config, split, retriever, None))


def _evaluator(
    config: FinetuneConfig, split: LeaveOneOutSplit, retriever: CandidateGenerator, template
) -> RankingEvaluator | None:
    """The in-training validation ranking of the retriever's lists (None when not asked for):
    by the template's label log-probs, or for the history task by likelihood."""
    if not (config.eval_steps and config.eval_users):
        return None
    common = {"users": config.eval_users, "num_candidates": config.num_candidates}
    if config.task == "history":
        params = LikelihoodParams(header=config.history_header)
        return LikelihoodEvaluator(split, retriever, params=params, **common)
    return RankingEvaluator(split, retriever, template, max_prompt_tokens=config.max_prompt_tokens, **common)


def _example_retriever(
    split: LeaveOneOutSplit, retriever: CandidateGenerator, config: FinetuneConfig
) -> CandidateGenerator:
    """The retriever that picks training candidates: the validation one, or with
    ``retriever_before_targets`` one fit without each user's training targets (the last
    ``windows`` training items), so the candidates and evidence of an example come from a
    retriever that never saw its target, as at test time."""
    if not config.retriever_before_targets:
        return retriever
    cut = [s[: max(len(s) - config.windows, 0)] for s in split.train]
    logger.info("fitting the example retriever without the last %d training items per user", config.windows)
    params = config.generator_params.get(config.retriever, {})
    generator = make_generator(config.retriever, seed=config.seed, **params)
    return generator.fit(TrainData(split.catalog, cut))


def _training_users(data: RecDataset, split: LeaveOneOutSplit, config: FinetuneConfig) -> np.ndarray | None:
    """Users whose histories become examples: all (None), a few-shot sample, minus cold-start users."""
    if config.source is None:
        return None if config.train_users is None else sample_users(split, config.train_users, config.seed)
    cd = cross_domain_split(
        data, config.source, config.target, config.cold_fraction, config.seed, order=config.order
    )
    cold_ids = set(cd.user_ids[cd.cold].tolist())
    empty = np.zeros(0, dtype=np.int64)
    seqs = [empty if uid in cold_ids else s for uid, s in zip(split.user_ids.tolist(), split.train)]
    users = sample_users(seqs, config.train_users or len(seqs), config.seed)
    logger.info(
        "%d cold-start users of %s -> %s left out; %d training users",
        len(cold_ids),
        config.source,
        config.target,
        len(users),
    )
    return users
