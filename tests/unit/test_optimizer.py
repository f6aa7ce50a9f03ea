"""Prompt optimiser: lossless steps (properties and examples), word selection with a scripted scorer."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.optimizer import PromptOptimizer, lossless
from agent.optimizer.lossless import (
    MIN_REPEATED_BLOCK_TOKENS,
    REPEATED_BLOCK,
    message_tokens,
    normalise,
    normalise_steps,
    remove_repeated_blocks,
    split_blocks,
    trim_turns,
)
from agent.optimizer.lossy import LossyCompressor, SurprisalScorer, TokenSurprisal, protected_terms, select_words
from agent.optimizer.markdown import rewrite_prose
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.providers.base import Message
from agent.settings import OptimizerSection

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

# Prose fragments chosen to meet every rewrite: markup, spacing, digits next to markup.
_FRAGMENTS = st.sampled_from(
    [
        "word", "Paris", "3.14", "1,000", "42", "-7", " ", "   ", "\t", "\n", "\n\n\n", "  \n",
        "<b>", "</b>", "<p>", "</p>", "<br/>", '<td width="50">', "<h2>", "<!-- note -->", "<!-- 9 -->",
        "**", "*", "__", "---", "\n---\n", "=====", "_____", ".", ",", "a<b", "x>y", "\r\n", "    ",
        "1", "5", ".", ",", ".5", "2.", "<i>", "</i>", "<!---->",
    ]
)  # fmt: skip
PROSE = st.lists(st.one_of(_FRAGMENTS, st.text(alphabet="ab1. ,\n*<>-", max_size=6)), max_size=30).map("".join)
CODE = st.text(alphabet=st.characters(blacklist_characters="`~\r", blacklist_categories=("Cs",)), max_size=40)
INLINE = st.text(alphabet="ab 1\t<>*.-", min_size=1, max_size=12).filter(lambda s: s.strip() != "")


def _numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


# -- normalisation ----------------------------------------------------------------------------


def test_normalise_collapses_spacing_and_strips_markup() -> None:
    text = "<p>Hello   <b>world</b>!</p>\n\n\n\n<!-- hidden -->Some **bold**   text.   \n\n------\n\nEnd\t\tnow"
    assert normalise(text) == "Hello world!\n\nSome bold text.\n\nEnd now"


def test_normalise_leaves_code_and_digits_alone() -> None:
    text = 'Run `x  =  1` then:\n\n```py\nx  =  1   \n\n\n\ny=2\n```\n\nor\n\n    indented   code\n\nTotal: 1<b>2</b> <td width="50">'
    out = normalise(text)
    assert "`x  =  1`" in out
    assert "```py\nx  =  1   \n\n\n\ny=2\n```" in out
    assert "    indented   code" in out
    assert "1 2" in out  # the tag went, the two numbers did not merge
    assert '<td width="50">' in out  # a digit in an attribute is never deleted


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(PROSE)
@example("1<b>.5</b> and 2.**5** and 3<!-- x -->,4 and **7**.1")
@example("3.14<i><i>3.14")  # two tags in a row: found by hypothesis
@example("3.14<!----><!---->3.14")
def test_normalise_keeps_every_number_and_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert _numbers(once) == _numbers(text)
    assert normalise(once) == once


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_normalise_is_idempotent_on_any_text(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert _numbers(once) == _numbers(text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(PROSE, CODE, PROSE, INLINE, PROSE)
def test_normalise_never_changes_a_code_block(before: str, code: str, between: str, inline: str, after: str) -> None:
    fenced = f"```python\n{code}\n```"
    text = f"{before}\n\n{fenced}\n\n{between} `{inline}` {after}"
    out = normalise(text)
    assert fenced in out
    assert f"`{inline}`" in out


# The plain forms of the patterns agent.optimizer.lossless rewrites to start with a literal or a
# class (the engine then skips ahead to where a match can start).
_PLAIN_BOLD = re.compile(r"(?<![\w*\\])\*\*(?=[^\s*])([^\n]*?[^\s*\\])\*\*(?![\w*])")
_PLAIN_SPACE_RUN = re.compile(r"(?<=\S)[^\S\n]{2,}|(?<=\S)[^\S\n ]")
_PLAIN_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_PLAIN_BLANK_LINES = re.compile(r"\n{3,}")
_SPACING = st.lists(
    st.sampled_from(["a", "b9", "*", "**", "\\", " ", "  ", "\t", "\xa0", "\u2003", "\n", "\n\n\n", "\r\n", "_", "-", " \n", "\t\n"]),
    max_size=40,
).map("".join)


@settings(max_examples=500)
@given(_SPACING)
@example("a  \t b\n   c\t\n\u2003d **x** \\**y** ** z**")
@example("x \n  \n\ty \t")
def test_the_fast_patterns_rewrite_exactly_as_their_plain_forms(text: str) -> None:
    assert [m.span(1) for m in lossless._BOLD.finditer(text)] == [m.span(1) for m in _PLAIN_BOLD.finditer(text)]
    plain = _PLAIN_SPACE_RUN.sub(" ", _PLAIN_TRAILING_SPACE.sub("", text.replace("\r\n", "\n")))
    assert lossless._normalise_whitespace(text) == _PLAIN_BLANK_LINES.sub("\n\n", plain).strip()


def _all_passes(text: str) -> str:
    """`normalise` by its definition: every pass over the prose, to a fixpoint, no shortcut."""
    for _ in range(4):
        again = rewrite_prose(text, lossless._normalise_prose)
        if again == text:
            break
        text = again
    return text


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(PROSE, _SPACING, st.text(max_size=40)))
@example("hi")
@example("`a  b`")
@example("x\n\n    indented  code")
def test_normalise_skips_work_only_where_no_pass_would_change_anything(text: str) -> None:
    assert normalise_steps(text) == (rewrite_prose(text, lossless._strip_markup), _all_passes(text))


# -- repeated blocks --------------------------------------------------------------------------

_DOC = (
    "The quarterly report covers revenue, churn and hiring across the three regions, with a "
    "breakdown per product line and a forecast for the next two quarters based on the pipeline."
)


def test_a_long_repeated_block_becomes_a_reference() -> None:
    assert count_text_tokens(_DOC) >= MIN_REPEATED_BLOCK_TOKENS
    messages = (
        Message("user", f"{_DOC}\n\nSummarise it."),
        Message("assistant", "Revenue grew."),
        Message("user", f"{_DOC}\n\nWhat about churn?"),
    )
    result = remove_repeated_blocks(messages)
    assert result.blocks_replaced == 1
    assert result.messages[0] == messages[0]
    assert result.messages[2].content == f"{REPEATED_BLOCK}\n\nWhat about churn?"


def test_a_short_repeated_block_stays() -> None:
    short = "Please answer briefly and cite the page."
    assert count_text_tokens(short) < MIN_REPEATED_BLOCK_TOKENS
    messages = (Message("user", f"{short}\n\nFirst?"), Message("assistant", "A."), Message("user", f"{short}\n\nNext?"))
    result = remove_repeated_blocks(messages)
    assert result.blocks_replaced == 0
    assert result.messages == messages


def test_blocks_split_at_blank_lines_but_not_inside_code() -> None:
    text = "one\n\n```\na\n\nb\n```\n\n  two"
    assert split_blocks(text) == ["one", "\n\n", "```\na\n\nb\n```", "\n\n", "  two"]
    assert "".join(split_blocks(text)) == text


@given(st.lists(st.sampled_from([_DOC, "short one", "Figures: 12, 3.5 and 7.", "```\ncode 1\n```"]), max_size=8))
def test_removing_repeated_blocks_keeps_every_number_of_the_conversation(blocks: list[str]) -> None:
    messages = tuple(Message("user", "\n\n".join(blocks[i : i + 2])) for i in range(0, len(blocks), 2))
    result = remove_repeated_blocks(messages)
    assert sorted(set(_numbers(" ".join(m.content for m in result.messages)))) == sorted(
        set(_numbers(" ".join(m.content for m in messages)))
    )


# -- trimming ---------------------------------------------------------------------------------


def _conversation(lengths: list[int]) -> tuple[Message, ...]:
    """System prompt, then alternating user/assistant messages of `lengths` words, ending with a user."""
    messages = [Message("system", "You are terse.")]
    roles = ["user", "assistant"] * len(lengths)
    for i, n in enumerate(lengths):
        messages.append(Message(roles[i], f"turn {i}: {' '.join(['words'] * n)}".strip()))  # type: ignore[arg-type]
    if messages[-1].role != "user":
        messages.append(Message("user", "and now?"))
    return tuple(messages)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 300), max_size=12), st.integers(64, 2000), st.one_of(st.none(), st.integers(50, 3000)))
def test_trimmed_history_keeps_system_and_latest_turn_within_budget(
    lengths: list[int], history: int, total: int | None
) -> None:
    messages = _conversation(lengths)
    result = trim_turns(messages, history, total)
    kept = result.messages
    assert kept[0] == messages[0]  # the system prompt
    assert kept[-1] == messages[-1]  # the latest user turn
    rest = kept[1:]
    assert rest == messages[len(messages) - len(rest) :]  # the newest turns, in order
    assert rest[0].role == "user"  # never an assistant message first
    older = sum(message_tokens(m) for m in rest[:-1])
    if result.turns_dropped:
        assert older <= history
        base = count_message_tokens([messages[0].content, messages[-1].content])
        if total is not None and base <= total:
            assert count_message_tokens(m.content for m in kept) <= total
    assert result.messages_dropped == len(messages) - len(kept)
    assert result.tokens_dropped == sum(message_tokens(m) for m in messages[1 : len(messages) - len(rest)])


def test_trimming_drops_the_oldest_turns_first_and_keeps_a_preamble_with_its_turn() -> None:
    messages = (
        Message("system", "Be brief."),
        Message("assistant", "Hi! How can I help?"),  # a greeting before the first user turn
        Message("user", "old " * 400),
        Message("assistant", "old answer " * 200),
        Message("user", "recent question"),
        Message("assistant", "recent answer"),
        Message("system", "Reminder: cite sources."),
        Message("user", "latest question?"),
    )
    result = trim_turns(messages, history_tokens=100)
    assert [m.content for m in result.messages] == [
        "Be brief.",
        "recent question",
        "recent answer",
        "Reminder: cite sources.",
        "latest question?",
    ]
    assert result.turns_dropped == 1
    assert result.messages_dropped == 3


def test_the_latest_turn_stays_even_over_budget() -> None:
    messages = (
        Message("system", "S"),
        Message("user", "a " * 50),
        Message("assistant", "b"),
        Message("user", "c " * 500),
    )
    result = trim_turns(messages, history_tokens=64, total_tokens=100)
    assert result.messages == (messages[0], messages[3])


# -- the optimiser ----------------------------------------------------------------------------


def test_optimizer_reports_each_step_and_a_note() -> None:
    messages = (
        Message("system", "You   answer <b>briefly</b>."),
        Message("user", "filler " * 600),
        Message("assistant", "ok"),
        Message("user", f"{_DOC}\n\nFirst question?"),
        Message("assistant", "Answer one."),
        Message("user", f"{_DOC}\n\nSecond question?"),
    )
    result = PromptOptimizer(OptimizerSection(max_history_tokens=200), None).optimize(messages)
    assert result.steps == ("markup", "whitespace", "trimmed_turns", "repeated_blocks")
    assert result.changed
    assert [m.content for m in result.messages] == [
        "You answer briefly.",
        f"{_DOC}\n\nFirst question?",
        "Answer one.",
        f"{REPEATED_BLOCK}\n\nSecond question?",
    ]
    assert "dropped 1 oldest turn (2 messages" in result.note
    assert "1 repeated block" in result.note
    assert result.tokens_before == count_message_tokens(m.content for m in messages)
    assert result.tokens_after == count_message_tokens(m.content for m in result.messages)
    assert result.tokens_after < result.tokens_before


def test_budget_tokens_caps_the_history_below_the_setting() -> None:
    messages = _conversation([100, 100, 100, 100, 5])
    optimizer = PromptOptimizer(OptimizerSection(max_history_tokens=3000), None)
    assert not optimizer.optimize(messages).changed
    capped = optimizer.optimize(messages, budget_tokens=300)
    assert capped.tokens_after <= 300
    assert capped.messages[0] == messages[0] and capped.messages[-1] == messages[-1]
    assert "trimmed_turns" in capped.steps


def test_a_disabled_optimizer_changes_nothing() -> None:
    messages = (Message("user", "a   lot   of   space\n\n\n\n<b>x</b>"),)
    result = PromptOptimizer(OptimizerSection(enabled=False), None).optimize(messages, budget_tokens=1)
    assert result.messages == messages
    assert not result.changed and result.steps == () and result.note == ""


def test_clean_prompts_come_back_unchanged() -> None:
    messages = (Message("system", "Be brief."), Message("user", "What is 2 + 2?"))
    result = PromptOptimizer(OptimizerSection(), None).optimize(messages)
    assert result.messages == messages and not result.changed and result.tokens_after == result.tokens_before


def test_lossy_without_a_model_store_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="scoring model"):
        PromptOptimizer(OptimizerSection(lossy=True), None)


# -- lossy word selection (scripted scorer) ---------------------------------------------------


def _scores(text: str, surprisal: dict[str, float] | None = None) -> list[TokenSurprisal]:
    """One token per word; surprisal by word (default: the word's length, so long words rank high)."""
    table = surprisal or {}
    return [TokenSurprisal(m.start(), m.end(), table.get(m.group(), len(m.group()))) for m in re.finditer(r"\S+", text)]


_LONG = (
    "the committee met on a rainy afternoon and discussed the budget of 4,250 dollars for the "
    "new library wing that Maria Lopez proposed together with the NASA outreach team, and it was "
    "agreed that the work would not start before spring. Call `build --fast` after that. "
    "the members also talked about the parking situation and the coffee machine at great length. "
    "Which option should the committee choose?"
)


def test_select_words_keeps_numbers_names_code_negations_and_the_question() -> None:
    result = select_words(_LONG, _scores(_LONG), 0.5, question=True)
    out = result.text
    for kept in (
        "4,250",
        "Maria",
        "Lopez",
        "NASA",
        "not",
        "`build --fast`",
        "Which option should the committee choose?",
    ):
        assert kept in out
    assert result.words_dropped > 0
    assert "the committee met" not in out  # short, unsurprising words went first


def test_select_words_reaches_about_the_keep_ratio() -> None:
    text = " ".join(f"word{'x' * (i % 7)}" for i in range(400)).replace("word", "item")
    scores = _scores(text)
    result = select_words(text, scores, 0.6, question=False)
    kept = len(result.text.split())
    assert 0.55 * 400 <= kept <= 0.6 * 400


def test_select_words_keeps_line_structure_and_list_labels() -> None:
    text = "Pick one of these options please\nA. the first option here\nB. the second option here\nAnswer:"
    result = select_words(text, _scores(text, {"options": 9.0, "first": 9.0, "second": 9.0}), 0.4, question=False)
    lines = result.text.split("\n")
    assert lines[1].startswith("A.") and lines[2].startswith("B.")
    assert "first" in lines[1] and "second" in lines[2]


def test_protected_terms_are_numbers_and_names() -> None:
    terms = protected_terms("Yesterday Maria paid 12.50 to ACME in Paris. Then she left `Code 7`.")
    assert terms == ["Maria", "12.50", "ACME", "Paris"]


class _ExplodingScorer:
    def surprisal(self, text: str) -> list[TokenSurprisal]:
        raise AssertionError("a short text must not reach the model")

    def close(self) -> None:
        pass


def test_the_compressor_returns_short_texts_unchanged_without_the_model() -> None:
    opened: list[SurprisalScorer] = []

    def open_scorer() -> SurprisalScorer:
        opened.append(_ExplodingScorer())
        return opened[-1]

    compressor = LossyCompressor(open_scorer, min_tokens=600, keep_ratio=0.5)
    result = compressor.compress("How tall is the Eiffel tower?", question=True)
    compressor.close()
    assert result.text == "How tall is the Eiffel tower?"
    assert result.tokens_before == result.tokens_after
    assert opened == []
