"""Candidate likelihood under a causal LM: how well does a title continue the user's history?

Listwise scoring reads one next-token distribution over candidate labels, so it sees where a
candidate stands in the list. This scorer never shows the list: for each candidate it measures
log P(title | the user's history as a plain list) - log P(title | an empty list), the pointwise
mutual information of history and title under the model. The history prefix is encoded once per
user and its key/value cache shared by all of that user's candidates, so a user costs one
prefix pass plus one batched pass over the candidates' title tokens. The prior term is computed
once per distinct title.

Engines: the transformers backend (above), and the in-process vLLM engine
(:meth:`~llmrec.llm.vllm_backend.VLLMBackend.continuation_logprobs`, prompt log-probs).

Titles are untrusted text: each is sanitized (one inert line, bounded length) before it is
tokenized, as in every prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from llmrec.llm.prompting import start_ids
from llmrec.llm.sanitize import sanitize_item_text

LIKELIHOOD_BACKENDS = (
    "the likelihood scorer reads prompt log-probs from the transformers backend or the "
    "in-process vllm engine; the vllm-server client does not request them"
)
"""Why a backend is refused for ``scorer: likelihood``."""


@dataclass
class LikelihoodParams:
    """What the scorer shows the model."""

    header: str = "Items a user liked, one per line:\n"
    """The line before the history; the same line (with no history) conditions the prior. Name
    the domain ("A user's favourite movies, ...") when there is one."""
    max_history: int = 20
    """The most recent titles shown (older ones are dropped)."""
    max_title_chars: int = 120
    """Each title is cut to this many characters after sanitizing."""

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if self.max_title_chars < 8:
            raise ValueError(f"max_title_chars must be >= 8, got {self.max_title_chars}")


def history_line(title: str, tokenizer, max_chars: int) -> str:
    """One title as one inert history line (sanitized, at most ``max_chars``, newline-ended): the
    form the scorer reads and the history-tuned LM is trained on
    (:mod:`llmrec.finetune.histories`)."""
    specials = getattr(tokenizer, "all_special_tokens", [])
    return sanitize_item_text(title, specials, max_chars) + "\n"


class CandidateLikelihood:
    """Pointwise PMI of each candidate title given a history, under a loaded causal LM.

    ``model`` / ``tokenizer``: a transformers causal LM and its tokenizer (e.g. a
    :class:`~llmrec.llm.transformers_backend.TransformersBackend`'s ``model`` and ``tokenizer``);
    ``model_name`` names them in :attr:`key`. ``continuations``: another engine's
    ``(prefix_ids, continuations) -> summed log-probs`` (e.g.
    :meth:`~llmrec.llm.vllm_backend.VLLMBackend.continuation_logprobs`), used instead of
    ``model``, which may then be None.
    """

    def __init__(
        self,
        model,
        tokenizer,
        params: LikelihoodParams | None = None,
        model_name: str = "",
        continuations: Callable[[list[int], list[list[int]]], np.ndarray] | None = None,
    ) -> None:
        if model is None and continuations is None:
            raise ValueError("needs a model or a continuations function")
        self.model = model
        self.tokenizer = tokenizer
        self.params = params or LikelihoodParams()
        self.model_name = model_name
        self._engine = continuations
        self._prior: dict[str, float] = {}
        self._start = start_ids(tokenizer)

    @property
    def key(self) -> str:
        """What the scores depend on besides the inputs: model name and prompt parameters (a
        cache key part)."""
        from llmrec.hashing import digest

        p = self.params
        return digest(self.model_name, p.header, p.max_history, p.max_title_chars)

    def _line(self, title: str) -> str:
        return history_line(title, self.tokenizer, self.params.max_title_chars)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _continuations(self, prefix: str, titles: Sequence[str]) -> np.ndarray:
        """Summed log-prob of each title line after ``prefix``."""
        prefix_ids = self._start + self._encode(prefix)  # e.g. Gemma's <bos>; titles get none
        cont = [self._encode(self._line(t)) for t in titles]
        if self._engine is not None:
            return np.asarray(self._engine(prefix_ids, cont), dtype=np.float64)
        return self._transformers_continuations(prefix_ids, cont)

    def _transformers_continuations(self, prefix_ids: list[int], cont: list[list[int]]) -> np.ndarray:
        """One prefix pass whose key/value cache all continuations share, then one batched pass."""
        import torch

        device = next(self.model.parameters()).device
        out = self.model(torch.tensor([prefix_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        cache = out.past_key_values
        n, width = len(cont), max(len(c) for c in cont)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, len(prefix_ids) + width), dtype=torch.long)
        mask[:, : len(prefix_ids)] = 1
        for r, c in enumerate(cont):  # right padding: the padded tail is masked and not read
            ids[r, : len(c)] = torch.tensor(c)
            mask[r, len(prefix_ids) : len(prefix_ids) + len(c)] = 1
        cache.batch_repeat_interleave(n)
        logits = self.model(
            ids.to(device), attention_mask=mask.to(device), past_key_values=cache, use_cache=True
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)  # position t predicts token t + 1
        scores = np.zeros(n)
        for r, c in enumerate(cont):
            total = float(first[c[0]])
            if len(c) > 1:
                total += float(logp[r, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
            scores[r] = total
        return scores

    def prior(self, titles: Sequence[str]) -> np.ndarray:
        """log P(title | the header alone), cached per title."""
        missing = list(dict.fromkeys(t for t in titles if t not in self._prior))
        for lo in range(0, len(missing), 32):
            chunk = missing[lo : lo + 32]
            for t, s in zip(chunk, self._with_model(self.params.header, chunk)):
                self._prior[t] = float(s)
        return np.array([self._prior[t] for t in titles])

    def _with_model(self, prefix: str, titles: Sequence[str]) -> np.ndarray:
        if self._engine is not None:
            return self._continuations(prefix, titles)
        import torch

        with torch.inference_mode():
            return self._continuations(prefix, titles)

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]], progress: bool = True
    ) -> list[np.ndarray]:
        """Per user, each candidate's log P(title | history) - log P(title | no history).

        ``histories``: per user, titles oldest first. ``candidates``: per user, titles.
        """
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
        out = []
        for hist, cands in tqdm(
            list(zip(histories, candidates)), desc="likelihood", disable=not progress, unit="user"
        ):
            if len(cands) == 0:
                out.append(np.zeros(0))
                continue
            shown = list(hist)[-self.params.max_history :]
            prefix = self.params.header + "".join(self._line(t) for t in shown)
            out.append(self._with_model(prefix, cands) - self.prior(cands))
        return out


class LikelihoodReranker:
    """The reranker interface (``score``, ``template``) over :class:`CandidateLikelihood`, so the
    likelihood scorer runs wherever an :class:`~llmrec.llm.reranker.LLMReranker` does (the
    pipeline, evaluation suites, fusion with the retriever order).

    ``backend``: a loaded transformers backend (its ``model``, ``tokenizer`` and scoring
    context) or in-process vLLM engine (its ``continuation_logprobs``: prompt log-probs). A
    candidate's score does not depend on where it stands in the list, so shuffled orders would
    change nothing and are not computed.
    """

    def __init__(self, backend, params: LikelihoodParams | None = None) -> None:
        from llmrec.llm.prompting import PromptTemplate

        self.backend = backend
        self.scorer = CandidateLikelihood(
            getattr(backend, "model", None),
            backend.tokenizer,
            params,
            model_name=getattr(backend, "model_name", ""),
            continuations=getattr(backend, "continuation_logprobs", None),
        )
        # No prompt shows a list; a template without evidence tells the pipeline not to
        # compute any.
        self.template = PromptTemplate.load("listwise")

    def score(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        params=None,
        evidence=None,
    ) -> list[np.ndarray]:
        """Per user, each candidate's PMI with the history (input order); higher = ranked higher.
        ``params``: a :class:`~llmrec.llm.reranker.RerankParams` (only ``progress`` and ``mode``
        are read); ``evidence`` is ignored."""
        from llmrec.errors import ConfigError

        if params is not None and params.mode != "verbalizer":
            raise ConfigError(
                "the likelihood scorer reads log-probabilities; it does not generate",
                parameter="mode",
                value=params.mode,
            )
        progress = True if params is None else params.progress
        scoring = getattr(self.backend, "_scoring", contextlib.nullcontext)
        with scoring():
            return self.scorer.score(histories, candidates, progress=progress)
