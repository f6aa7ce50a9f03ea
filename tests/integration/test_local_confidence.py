"""The local model's confidence (the cascade's signal), with the real SmolLM2 through the provider.

The reference is llama-cpp-python's own logprobs from a second copy of the model loaded with
`logits_all=True`, on the same prompt tokens, greedy.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import Llama

from agent.models.store import ModelStore
from agent.providers.base import CallProgress, ChatParams, Delta, Message, StreamEnd
from agent.providers.local_llama import LocalLlamaProvider
from agent.settings import LocalModelConfig
from tests.conftest import MODELS_DIR

COUNT = (Message("user", "Count from 1 to 10."),)
GREEDY = ChatParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def provider(chat_model_path: Path) -> Iterator[LocalLlamaProvider]:
    provider = LocalLlamaProvider(LocalModelConfig(), ModelStore(MODELS_DIR))
    yield provider
    asyncio.run(provider.close())


@pytest.fixture(scope="module")
def reference(chat_model_path: Path) -> Iterator[Llama]:
    llm = Llama(model_path=str(chat_model_path), n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
    yield llm
    llm.close()


def forget_prompt(provider: LocalLlamaProvider) -> None:
    """Make the next call evaluate its whole prompt in one batch.

    Asked the same prompt again, llama-cpp-python keeps the cached prefix and evaluates only the
    last prompt token; llama.cpp's one-token kernels give logits that differ by a few hundredths
    of a log-prob, enough to move the confidence in the third digit. Exact comparisons need the
    same path on both sides.
    """
    provider._ensure_loaded().llm.reset()


def complete(
    provider: LocalLlamaProvider, messages: tuple[Message, ...], params: ChatParams
) -> tuple[str, CallProgress]:
    forget_prompt(provider)
    progress = CallProgress()
    completion = asyncio.run(provider.complete("local", messages, params, progress))
    assert completion.text == progress.text
    return completion.text, progress


def reference_logprobs(
    provider: LocalLlamaProvider, reference: Llama, messages: tuple[Message, ...]
) -> tuple[str, list[float]]:
    loaded = provider._ensure_loaded()  # the provider's own prompt: its template, its tokenizer
    formatted = loaded.formatter(messages=[m.as_openai() for m in messages])
    prompt = loaded.llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
    reference.reset()
    out: Any = reference.create_completion(prompt, max_tokens=GREEDY.max_tokens, temperature=0, logprobs=1)
    choice = out["choices"][0]
    return choice["text"], [float(lp) for lp in choice["logprobs"]["token_logprobs"]]


@pytest.mark.parametrize(
    "question",
    ["Count from 1 to 10.", "Write a haiku about rain.", "What is the capital of France? Reply with one word."],
)
def test_confidence_matches_logits_all_logprobs(provider: LocalLlamaProvider, reference: Llama, question: str) -> None:
    messages = (Message("user", question),)
    text, progress = complete(provider, messages, GREEDY)
    ref_text, logprobs = reference_logprobs(provider, reference, messages)
    assert text == ref_text  # same greedy tokens, so the same tokens are scored
    assert progress.confidence is not None
    assert math.log(progress.confidence) == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-4)


def test_confidence_is_a_probability_for_complete_and_stream(provider: LocalLlamaProvider) -> None:
    text, completed = complete(provider, COUNT, GREEDY)

    async def stream() -> tuple[str, CallProgress, StreamEnd]:
        progress, parts, end = CallProgress(), [], None
        forget_prompt(provider)
        async for item in provider.stream("local", COUNT, GREEDY, progress):
            if isinstance(item, Delta):
                parts.append(item.text)
            else:
                end = item
        assert end is not None
        return "".join(parts), progress, end

    streamed_text, streamed, end = asyncio.run(stream())
    assert end.finish_reason == "length"
    assert streamed_text == text
    assert completed.confidence is not None and 0 < completed.confidence <= 1
    assert streamed.confidence == pytest.approx(completed.confidence, rel=1e-9)


def test_tokens_cut_by_a_stop_string_are_not_counted(provider: LocalLlamaProvider) -> None:
    cut_text, cut = complete(provider, COUNT, ChatParams(max_tokens=24, temperature=0, stop=("3.",)))
    assert cut_text == "1. 1\n2. 2\n"
    # The same answer, ended by max_tokens instead: the tokens of "3." are never generated.
    tokens = provider._ensure_loaded().llm.tokenize(cut_text.encode(), add_bos=False)
    same_text, same = complete(provider, COUNT, ChatParams(max_tokens=len(tokens), temperature=0))
    assert same_text == cut_text
    assert cut.confidence == pytest.approx(same.confidence, rel=1e-9)


def test_no_answer_text_means_no_confidence(provider: LocalLlamaProvider) -> None:
    text, progress = complete(provider, COUNT, ChatParams(max_tokens=24, temperature=0, stop=("1",)))
    assert text == ""
    assert progress.confidence is None


def test_a_cancelled_stream_still_gets_confidence_for_what_it_generated(provider: LocalLlamaProvider) -> None:
    progress = CallProgress()

    async def leave_early() -> None:
        stream = provider.stream("local", COUNT, ChatParams(max_tokens=200, temperature=0), progress)
        async for item in stream:
            assert isinstance(item, Delta)
            break
        await stream.aclose()  # type: ignore[attr-defined]
        # the worker notices the cancel at its next token; wait for it on the model's own thread
        await asyncio.get_running_loop().run_in_executor(provider._executor, lambda: None)

    asyncio.run(leave_early())
    assert progress.text
    assert progress.confidence is not None and 0 < progress.confidence <= 1


def test_unknowable_answers_get_lower_confidence_than_predictable_ones(provider: LocalLlamaProvider) -> None:
    unknowable = [
        "Guess the number I am thinking of, between 1 and 1000000. Reply with the number only.",
        "What is the name of my cat? Reply with one word.",
    ]
    predictable = ["Continue the sequence: 1, 2, 3, 4, 5,", "Write the numbers from 1 to 10 separated by commas."]

    def confidence(question: str) -> float:
        _, progress = complete(provider, (Message("user", question),), ChatParams(max_tokens=12, temperature=0))
        assert progress.confidence is not None
        return progress.confidence

    assert max(map(confidence, unknowable)) < min(map(confidence, predictable))
