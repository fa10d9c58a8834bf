"""Prompt templates as data (``prompts/*.jinja``) and budget-aware rendering.

A template file starts with a Jinja comment holding a YAML header::

    {#---
    name: listwise
    task: listwise            # or pointwise
    labels: [A, B, C, ...]
    max_history: 20
    max_title_tokens: 32
    system: You are a recommender system.
    ---#}

The body renders the user message from ``history`` (titles, oldest first),
``candidates`` (titles) and ``labels``; a template with ``evidence: true`` in its header
also gets ``evidence``: per candidate, what the retriever knows about it
(:func:`llmrec.candidates.evidence.candidate_evidence`: ``{signal: rank within the list}``).
Rendering is pure: it needs a tokenizer (for the chat format and the token budget) but no model.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import yaml

from llmrec.errors import ConfigError, LlmrecError
from llmrec.llm.sanitize import sanitize_item_text

_HEADER = re.compile(r"\A\s*\{#---\s*\n(.*?)\n---#\}\s*\n", re.DOTALL)
PLAIN_RESPONSE = "\n\n### Response:\n"


def prompts_dir() -> Path:
    """Folder of the bundled templates: ``$LLMREC_PROMPTS``, else the checkout's ``prompts/``,
    else the installed package ``llmrec.prompts`` (the same files, shipped in the wheel)."""
    env = os.environ.get("LLMREC_PROMPTS")
    if env:
        return Path(env)
    # A checkout first: run from it (PYTHONPATH), its own templates, not an installed copy's.
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "prompts").is_dir():
        return checkout / "prompts"
    try:
        return Path(str(importlib.resources.files("llmrec.prompts")))
    except ModuleNotFoundError:
        raise LlmrecError("cannot find the templates (llmrec.prompts); set LLMREC_PROMPTS") from None


@dataclass
class PromptTemplate:
    """A parsed template: header fields plus the compiled Jinja body."""

    name: str
    task: Literal["listwise", "pointwise"]
    labels: list[str]
    body: str
    max_history: int = 20
    max_title_tokens: int = 32
    system: str = ""
    description: str = ""
    evidence: bool = False
    """The body shows retriever evidence per candidate; callers must pass it."""
    path: str = ""
    _compiled: jinja2.Template | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.task not in ("listwise", "pointwise"):
            raise ConfigError(
                "must be 'listwise' or 'pointwise'", parameter=f"{self.path}: task", value=self.task
            )
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ConfigError("labels must be non-empty and distinct", parameter="labels", value=self.labels)
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self._compiled = env.from_string(self.body)

    @classmethod
    def load(cls, name_or_path: str | Path) -> PromptTemplate:
        """Load ``prompts/<name>.jinja`` or a template file path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = prompts_dir() / f"{name_or_path}.jinja"
        if not path.exists():
            available = sorted(p.stem for p in prompts_dir().glob("*.jinja"))
            raise ConfigError(
                f"no such template; available: {', '.join(available)} (a name in {prompts_dir()} or a "
                ".jinja file path)",
                parameter="template",
                value=str(name_or_path),
            )
        source = path.read_text(encoding="utf-8")
        match = _HEADER.match(source)
        if not match:
            raise LlmrecError(f"{path}: template must start with a '{{#---' YAML header '---#}}' block")
        header: dict[str, Any] = yaml.safe_load(match.group(1)) or {}
        labels = [str(x) for x in header.pop("labels", [])]
        known = {"name", "task", "max_history", "max_title_tokens", "system", "description", "evidence"}
        unknown = set(header) - known
        if unknown:
            raise LlmrecError(f"{path}: unknown header field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(labels=labels, body=source[match.end() :], path=str(path), **header)

    @property
    def max_candidates(self) -> int:
        """Listwise: one label per candidate. Pointwise: one candidate per prompt."""
        return len(self.labels) if self.task == "listwise" else 1

    def user_message(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        evidence: Sequence[dict[str, int]] | None = None,
    ) -> str:
        """The rendered body (already-sanitized titles; ``evidence``: one dict per candidate,
        needed when the template shows it)."""
        check_evidence(self, candidates, evidence)
        if len(candidates) > self.max_candidates:
            raise ConfigError(
                f"template {self.name!r} has {self.max_candidates} labels",
                parameter="candidates",
                value=len(candidates),
            )
        assert self._compiled is not None
        return self._compiled.render(
            history=list(history),
            candidates=list(candidates),
            labels=self.labels,
            evidence=[dict(e) for e in evidence or []],
        ).strip()


def check_evidence(
    template: PromptTemplate, candidates: Sequence[str], evidence: Sequence[dict[str, int]] | None
) -> None:
    """An evidence template needs one evidence dict per candidate (ints only: nothing from
    item text reaches the prompt through it)."""
    if not template.evidence:
        return
    if evidence is None:
        raise ConfigError(
            f"template {template.name!r} shows the retriever's evidence per candidate; rank through a "
            "Recommender (or pass evidence=candidate_evidence(...)), or pick a template without it",
            parameter="template",
            value=template.name,
        )
    if len(evidence) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(evidence)} evidence entries")
    for e in evidence:
        if not all(isinstance(v, int | np.integer) for v in e.values()):
            raise ValueError(f"evidence values must be integers, got {e!r}")


def start_ids(tokenizer: Any) -> list[int]:
    """The special token ids the tokenizer puts before a text (e.g. Gemma's ``<bos>``); often none.

    Every encoder here calls ``encode(..., add_special_tokens=False)`` (a chat template writes its
    own specials, and continuations must not get them), so each text that starts a sequence
    without a chat template begins with these ids itself: plain-format prompts
    (:class:`PromptRenderer`), the likelihood scorer's prefix and the history LM's texts."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    n = len(full) - len(plain)
    if n <= 0 or full[n:] != plain:
        return []
    return list(full[:n])


def special_prefix(tokenizer: Any) -> str:
    """:func:`start_ids` as text, for prompts built as strings."""
    ids = start_ids(tokenizer)
    return tokenizer.decode(ids) if ids else ""


class PromptRenderer:
    """Renders a template for one tokenizer: chat format, sanitizing, token budget."""

    def __init__(self, template: PromptTemplate, tokenizer: Any, max_prompt_tokens: int = 1024) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.use_chat = bool(getattr(tokenizer, "chat_template", None))
        self.plain_prefix = "" if self.use_chat else special_prefix(tokenizer)
        self._specials = list(getattr(tokenizer, "all_special_tokens", []))
        self._specials += [str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]

    def clean_title(self, title: str, max_tokens: int | None = None) -> str:
        """Sanitized title cut to ``max_tokens`` tokens (the template's limit by default)."""
        max_tokens = self.template.max_title_tokens if max_tokens is None else max_tokens
        text = sanitize_item_text(title, self._specials, max_chars=max_tokens * 8)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_tokens:
            text = self.tokenizer.decode(ids[:max_tokens]).strip() + "…"
            text = sanitize_item_text(text, self._specials)
        return text

    def wrap(self, user_message: str) -> str:
        """The full prompt text; the next token after it is the answer label."""
        if self.use_chat:
            messages = []
            if self.template.system:
                messages.append({"role": "system", "content": self.template.system})
            messages.append({"role": "user", "content": user_message})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system = f"{self.template.system}\n\n" if self.template.system else ""
        return f"{self.plain_prefix}{system}{user_message.rstrip()}{PLAIN_RESPONSE}"

    def n_tokens(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt, add_special_tokens=False))

    def render(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        evidence: Sequence[dict[str, int]] | None = None,
    ) -> str:
        """Prompt for one user: newest ``max_history`` titles, all candidates, within the budget.

        Over budget, the oldest history titles go first; then titles are cut
        shorter; the candidate list itself is never cut (an error instead).
        """
        title_tokens = self.template.max_title_tokens
        while True:
            hist = [self.clean_title(t, title_tokens) for t in list(history)[-self.template.max_history :]]
            cands = [self.clean_title(t, title_tokens) for t in candidates]
            prompt = self._fit_history(hist, cands, evidence)
            if prompt is not None:
                return prompt
            if title_tokens <= 4:
                raise LlmrecError(
                    f"{len(candidates)} candidates do not fit in max_prompt_tokens={self.max_prompt_tokens} "
                    "even with no history and 4-token titles; raise max_prompt_tokens or pass fewer items"
                )
            title_tokens //= 2

    def _fit_history(
        self, hist: list[str], cands: list[str], evidence: Sequence[dict[str, int]] | None
    ) -> str | None:
        prompt = self.wrap(self.template.user_message(hist, cands, evidence))
        if self.n_tokens(prompt) <= self.max_prompt_tokens:
            return prompt
        lo, hi = 0, len(hist)  # binary search the number of oldest titles to drop
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = self.wrap(self.template.user_message(hist[mid:], cands, evidence))
            if self.n_tokens(candidate) <= self.max_prompt_tokens:
                best, hi = candidate, mid - 1
            else:
                lo = mid + 1
        return best
