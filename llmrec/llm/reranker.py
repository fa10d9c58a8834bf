"""LLM reranking: one forward pass, the candidates' label log-probs decide the order.

Two nouns, after vLLM's ``LLM`` + ``SamplingParams``: a long-lived
:class:`LLMReranker` (backend + template, loaded once) and a small per-call
:class:`RerankParams`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm.auto import tqdm

from llmrec.errors import ConfigError
from llmrec.llm.backend import ScoringBackend, label_token_ids
from llmrec.llm.prompting import PromptRenderer, PromptTemplate

if TYPE_CHECKING:
    from llmrec.candidates.evidence import Evidence


@dataclass
class RerankParams:
    """Per-call options of :meth:`LLMReranker.score`."""

    shuffles: int = 0
    """0: candidates in retriever order. N > 0: average label log-probs over N seeded
    shuffled orders (position-bias mitigation; N forward passes per user)."""
    seed: int = 0
    mode: Literal["verbalizer", "generate"] = "verbalizer"
    """'generate' decodes a ranked list of labels instead (slow; for comparison only)."""
    max_new_tokens: int = 80
    chunk_size: int = 16
    """Prompts handed to the backend at once (the progress bar advances per chunk)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shuffles < 0:
            raise ConfigError("must be >= 0", parameter="shuffles", value=self.shuffles)
        if self.mode not in ("verbalizer", "generate"):
            raise ConfigError("must be 'verbalizer' or 'generate'", parameter="mode", value=self.mode)


class LLMReranker:
    """Scores candidate lists for users from their history titles."""

    def __init__(
        self,
        backend: ScoringBackend,
        template: PromptTemplate | str = "listwise",
        max_prompt_tokens: int = 1024,
    ) -> None:
        self.backend = backend
        self.template = PromptTemplate.load(template) if isinstance(template, str) else template
        self.renderer = PromptRenderer(self.template, backend.tokenizer, max_prompt_tokens)
        # Fail at load time, not mid-run, if a label is not one token for this tokenizer.
        self.label_ids = label_token_ids(backend.tokenizer, self.template.labels)

    def for_adapter(self, name: str | None) -> LLMReranker:
        """This reranker with the backend's adapter ``name`` (``backend.for_adapter``: vllm,
        vllm-server); the engine, template and prompt budget are shared."""
        if not hasattr(self.backend, "for_adapter"):
            raise ConfigError(
                f"the {type(self.backend).__name__} backend applies only its configured adapter",
                parameter="adapter",
                value=name,
            )
        view = copy.copy(self)
        view.backend = self.backend.for_adapter(name)
        return view

    def build_prompts(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        params: RerankParams,
        evidence: Sequence[Evidence] | None = None,
    ) -> tuple[list[str], list[tuple[int, np.ndarray]]]:
        """Prompts plus, for each, (user index, candidate positions in label order).

        ``evidence``: per user, one dict per candidate (templates with ``evidence: true``).
        """
        prompts: list[str] = []
        layout: list[tuple[int, np.ndarray]] = []
        if evidence is not None and len(evidence) != len(candidates):
            raise ValueError(f"{len(candidates)} candidate lists but {len(evidence)} evidence lists")
        for u, (hist, cands) in enumerate(zip(histories, candidates)):
            n = len(cands)
            ev = None if evidence is None else evidence[u]

            def shown(order: Sequence[int], ev=ev) -> list[dict[str, int]] | None:
                return None if ev is None else [ev[i] for i in order]

            if self.template.task == "pointwise":
                for c in range(n):
                    prompts.append(self.renderer.render(hist, [cands[c]], shown([c])))
                    layout.append((u, np.array([c])))
                continue
            if n > len(self.template.labels):
                raise ConfigError(
                    f"template {self.template.name!r} has {len(self.template.labels)} labels",
                    parameter="candidates per user",
                    value=n,
                )
            orders = (
                [np.arange(n)]
                if params.shuffles == 0
                else [
                    np.random.default_rng([params.seed, u, s]).permutation(n) for s in range(params.shuffles)
                ]
            )
            for order in orders:
                prompts.append(self.renderer.render(hist, [cands[i] for i in order], shown(order)))
                layout.append((u, order))
        return prompts, layout

    def score(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        params: RerankParams | None = None,
        evidence: Sequence[Evidence] | None = None,
    ) -> list[np.ndarray]:
        """Per user, one score per candidate (input order); higher = ranked higher.

        ``evidence``: what the retriever knows per candidate, for templates that show it
        (:meth:`llmrec.pipeline.Recommender.llm_scores` supplies it).
        """
        params = params or RerankParams()
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
        prompts, layout = self.build_prompts(histories, candidates, params, evidence)
        values: list[np.ndarray] = []
        bar = tqdm(
            total=len(prompts), desc=f"rerank ({params.mode})", disable=not params.progress, unit="prompt"
        )
        for lo in range(0, len(prompts), params.chunk_size):
            chunk = prompts[lo : lo + params.chunk_size]
            if params.mode == "generate":
                shown = layout[lo : lo + len(chunk)]
                values.extend(self._generated_scores(chunk, shown, params.max_new_tokens))
            else:
                values.extend(self._verbalizer_scores(chunk))
            bar.update(len(chunk))
        bar.close()
        return candidate_scores(layout, values, [len(c) for c in candidates])

    def _verbalizer_scores(self, prompts: list[str]) -> np.ndarray:
        return prompt_scores(self.backend.label_logprobs(prompts, self.label_ids), self.template.task)

    def _generated_scores(self, prompts: list[str], layout, max_new_tokens: int) -> list[np.ndarray]:
        texts = self.backend.generate(prompts, max_new_tokens)
        out = []
        for text, (_, order) in zip(texts, layout):
            if self.template.task == "pointwise":
                out.append(np.array([1.0 if text.strip().lower().startswith("yes") else 0.0]))
                continue
            ranked = parse_labels(text, self.template.labels[: len(order)])
            row = np.full(len(order), -1e9)  # unnamed candidates go last, keeping retriever order
            for pos, label_index in enumerate(ranked):
                row[label_index] = -pos
            out.append(row)
        return out


def prompt_scores(logp: np.ndarray, task: str) -> np.ndarray:
    """Each prompt's candidate scores (label order) from its label log-probs (``prompts x
    labels``): the log-probs themselves, or for a pointwise ``task`` log P(yes) - log P(no)."""
    logp = np.asarray(logp)
    if task == "pointwise":
        return (logp[:, 0] - logp[:, 1])[:, None]
    return logp


def candidate_scores(
    layout: Sequence[tuple[int, np.ndarray]], values: Sequence[np.ndarray], sizes: Sequence[int]
) -> list[np.ndarray]:
    """Per user, one score per candidate (input order): the mean over the user's prompts
    (``layout``: user index and candidate positions in label order, as
    :meth:`LLMReranker.build_prompts`) of each prompt's scores ``values``; ``sizes``: the
    number of candidates of each user."""
    scores = [np.zeros(n, dtype=np.float64) for n in sizes]
    counts = [np.zeros(n, dtype=np.float64) for n in sizes]
    for (u, order), row in zip(layout, values):
        scores[u][order] += row[: len(order)]
        counts[u][order] += 1
    return [s / np.maximum(c, 1) for s, c in zip(scores, counts)]


def parse_labels(text: str, labels: Sequence[str]) -> list[int]:
    """Label indices in order of first appearance in generated ``text``."""
    index = {label: i for i, label in enumerate(labels)}
    seen: list[int] = []
    for token in re.findall(r"\b\w+\b", text):
        i = index.get(token)
        if i is not None and i not in seen:
            seen.append(i)
    return seen
