"""The prompt optimiser: fewer tokens for the same answer.

Steps, in order (each named in `Optimized.steps` when it changed something):

- ``markup``: HTML tags and comments, bold markers, rules and decoration runs removed;
- ``whitespace``: runs of spaces and blank lines collapsed, trailing spaces stripped;
- ``trimmed_turns``: the oldest turns dropped to fit the history budget;
- ``repeated_blocks``: long blocks seen earlier in the conversation replaced by a reference;
- ``lossy`` (off by default): long non-system messages shortened by token surprisal.

Code and numbers pass the lossless steps unchanged. Safe to call from any thread; with lossy
compression on, `optimize` blocks on the local model: call it off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from agent.errors import ConfigError
from agent.models.store import ModelStore
from agent.optimizer.lossless import normalise_steps, trim_turns
from agent.optimizer.lossy import LossyCompressor, SurprisalScorer
from agent.pricing.tokens import count_message_tokens
from agent.providers.base import Message
from agent.settings import OptimizerSection
from agent.textmemo import TextMemo

# A long system prompt or history comes again with every call: normalised once (pure functions
# of the text, so a copy is as good as the work).
_NORMALISED: TextMemo[tuple[str, str]] = TextMemo()


def _normalised(content: str) -> tuple[str, str]:
    """``content`` with its markup normalised, and with markup and whitespace normalised."""
    done = _NORMALISED.get(content)
    if done is None:
        done = normalise_steps(content)
        _NORMALISED.put(content, done)
    return done


@dataclass(frozen=True)
class Optimized:
    messages: tuple[Message, ...]
    tokens_before: int  # o200k estimate of the whole prompt, chat framing included
    tokens_after: int
    steps: tuple[str, ...]  # machine-stable names of the steps that changed something
    note: str  # short and human-readable, for the ledger ("" when nothing changed)
    changed: bool

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after


class PromptOptimizer:
    def __init__(self, settings: OptimizerSection, store: ModelStore | None) -> None:
        if settings.enabled and settings.lossy and store is None:
            raise ConfigError("optimizer.lossy needs the local scoring model, and no model store was given")
        self.settings = settings
        self._store = store
        self._compressor: LossyCompressor | None = None
        self._lock = threading.Lock()

    @property
    def runs_model(self) -> bool:
        """Whether `optimize` may run the local scoring model (lossy on): call it off the event loop."""
        return self.settings.enabled and self.settings.lossy

    def optimize(
        self, messages: tuple[Message, ...], budget_tokens: int | None = None, *, lossy: bool = True
    ) -> Optimized:
        """`messages` in fewer tokens. `budget_tokens` caps the whole prompt (e.g. the answering
        model's context minus its max_tokens); older turns also stay under max_history_tokens.

        Raises `ModelError` when lossy compression is on and its scoring model cannot be loaded;
        ``lossy=False`` runs the lossless steps only (the caller's fallback).
        """
        before = _prompt_tokens(messages)
        if not self.settings.enabled:
            return Optimized(messages, before, before, (), "", False)
        steps: list[str] = []
        notes: list[str] = []

        lossless = [_normalised(m.content) for m in messages]
        marked = tuple(_with_content(m, markup_only) for m, (markup_only, _) in zip(messages, lossless, strict=True))
        normalised = tuple(_with_content(m, whole) for m, (_, whole) in zip(messages, lossless, strict=True))
        if marked != messages:
            steps.append("markup")
        if normalised != marked:
            steps.append("whitespace")
        if steps:
            notes.append(f"normalised ({before - _prompt_tokens(normalised)} tokens)")

        trimmed = trim_turns(normalised, self.settings.max_history_tokens, budget_tokens)
        if trimmed.turns_dropped:
            steps.append("trimmed_turns")
            turns = "turn" if trimmed.turns_dropped == 1 else "turns"
            notes.append(
                f"dropped {trimmed.turns_dropped} oldest {turns} "
                f"({trimmed.messages_dropped} messages, {trimmed.tokens_dropped} tokens)"
            )
        if trimmed.blocks_replaced:
            steps.append("repeated_blocks")
            notes.append(f"{trimmed.blocks_replaced} repeated block{'s' * (trimmed.blocks_replaced != 1)}")
        result = trimmed.messages

        if self.settings.lossy and lossy:
            result, saved, compressed = self._lossy(result)
            if compressed:
                steps.append("lossy")
                notes.append(f"lossy: {compressed} message{'s' * (compressed != 1)} ({saved} tokens)")

        after = _prompt_tokens(result)
        changed = result != messages
        return Optimized(result, before, after, tuple(steps), "; ".join(notes), changed)

    def _lossy(self, messages: tuple[Message, ...]) -> tuple[tuple[Message, ...], int, int]:
        compressor = self._lossy_compressor()
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        out: list[Message] = []
        saved = compressed = 0
        for i, message in enumerate(messages):
            if message.role in ("system", "tool"):  # instructions, or data a tool returned: as they are
                out.append(message)
                continue
            result = compressor.compress(message.content, question=i == last_user)
            if result.text != message.content:
                compressed += 1
                saved += result.tokens_before - result.tokens_after
            out.append(_with_content(message, result.text))
        return tuple(out), saved, compressed

    def _lossy_compressor(self) -> LossyCompressor:
        with self._lock:
            if self._compressor is None:
                self._compressor = LossyCompressor(
                    self._open_scorer,
                    min_tokens=self.settings.lossy_min_tokens,
                    keep_ratio=self.settings.lossy_keep_ratio,
                )
            return self._compressor

    def _open_scorer(self) -> SurprisalScorer:
        from agent.providers.llama_scorer import LlamaSurprisalScorer

        if self._store is None:  # refused in __init__ unless the optimiser is disabled
            raise ConfigError("optimizer.lossy needs the local scoring model, and no model store was given")
        return LlamaSurprisalScorer(self._store.resolve(self.settings.scoring_model))

    def close(self) -> None:
        with self._lock:
            compressor, self._compressor = self._compressor, None
        if compressor is not None:
            compressor.close()


def _with_content(message: Message, content: str) -> Message:
    """The message with new content; a tool's result is data and keeps its exact text."""
    if content == message.content or message.role == "tool":
        return message
    return replace(message, content=content)


def _prompt_tokens(messages: tuple[Message, ...]) -> int:
    return count_message_tokens(m.content for m in messages)
