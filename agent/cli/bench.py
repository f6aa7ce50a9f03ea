"""The `bench` group: cache quality, routing, compression, replay, similarity."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx

if TYPE_CHECKING:
    from agent.benchmarks.routing import TierPrice
    from agent.settings import Settings


# -- bench ------------------------------------------------------------------------------------


@main.group(cls=_Group)
def bench() -> None:
    """Measure the cache, similarity search, router, optimiser and whole pipeline on your data."""


@bench.command("cache-quality")
@click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with q1, q2 and duplicate (true/false).",
)
@click.option("--limit", type=int, default=None, help="Use the first N pairs.")
@click.option("--min-precision", type=float, default=None, help="cache.min_precision (default: as configured).")
@click.option("--threshold", type=float, default=None, help="Similarity floor of candidates (default: the verifier's).")
@click.option("--no-guard", is_flag=True, help="Turn the rule guard off.")
@click.option("--no-verifier", is_flag=True, help="Turn the verifier off: the similarity threshold decides.")
@click.option("--near-misses", type=int, default=0, metavar="N",
              help="Also write N near misses per rule from the file's questions (a number, negation, place, "
                   "language, unit or month changed) and count the cache's false hits on them.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_cache_quality(
    obj: _Context,
    pairs_file: str,
    limit: int | None,
    min_precision: float | None,
    threshold: float | None,
    no_guard: bool,
    no_verifier: bool,
    near_misses: int,
    as_json: bool,
) -> None:
    """Precision and recall of the semantic cache: store q1, look up q2, for every pair.

    Pairs the shipped verifier was trained or calibrated on are left out.
    """
    from pathlib import Path

    from rich.progress import Progress

    from agent.benchmarks.cache_quality import read_pairs, run_cache_quality
    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder
    from agent.services import cache_verifier

    settings = obj.settings()
    update: dict[str, Any] = {"guard": not no_guard, "verifier": not no_verifier}
    if threshold is not None:
        update["threshold"] = threshold
    if min_precision is not None:
        update["min_precision"] = min_precision
    config = settings.cache.model_copy(update=update)
    pairs = read_pairs(Path(pairs_file), limit)
    store = ModelStore(settings.models_dir, settings.share_dir)
    embedder = OnnxEmbedder(store.resolve(config.embedding_model), store.resolve(config.embedding_tokenizer),
                            threads=max(1, (os.cpu_count() or 2) - 1))  # fmt: skip
    verifier = cache_verifier(settings, store)() if config.verifier else None
    with Progress(disable=as_json, transient=True) as bar:
        task = bar.add_task("embedding", total=len(pairs))
        result = run_cache_quality(pairs, embedder, config, verifier, progress=lambda n: bar.advance(task, n))
    if near_misses > 0:
        from agent.benchmarks.near_miss import false_hits
        from agent.benchmarks.near_miss import near_misses as write_near_misses

        questions = [q for p in read_pairs(Path(pairs_file), None) for q in (p.q1, p.q2)]
        result["near_misses"] = false_hits(write_near_misses(questions, near_misses), embedder, config, verifier)
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_cache_quality(result)


def _print_cache_quality(result: dict[str, Any]) -> None:
    left_out = f", {result['left_out_as_trained']} left out as trained on" if result.get("left_out_as_trained") else ""
    if result["verifier"]:
        setting = f"min_precision {result['min_precision']} (verifier from {result['decision_threshold']})"
    else:
        setting = f"similarity threshold {result['threshold']}, no verifier"
    click.echo(
        f"{result['pairs']} pairs ({result['duplicates']} duplicates{left_out}), {setting}, guard "
        f"{'on' if result['guard'] else 'off'}: precision {result['precision']}, recall {result['recall']}, "
        f"{result['wrong_answers_served']} wrong answers served"
    )
    if result["verifier"]:
        click.echo(f"{'min_precision':>13} {'verifier >=':>11} {'precision':>9} {'recall':>7} {'wrong':>6}")
        for row in result["sweep"]:
            click.echo(f"{row['min_precision']:>13.2f} {row['decision_threshold']:>11.4f} "
                       f"{row['precision'] or 0:>9.4f} {row['recall']:>7.4f} {row['wrong']:>6}")  # fmt: skip
    click.echo(f"similarity alone (guard on): {'threshold':>9} {'precision':>9} {'recall':>7}")
    for row in result["similarity_only"]:
        click.echo(f"{'':29} {row['threshold']:>9.2f} {row['precision'] or 0:>9.4f} {row['recall']:>7.4f}")
    if "near_misses" in result:
        near = result["near_misses"]
        click.echo(f"near misses: {near['false_hits']} false hits in {near['pairs']} pairs (goal: 0)")
        for rule, counts in near["by_rule"].items():
            click.echo(f"  {rule:<9} {counts['false_hits']:>4} of {counts['pairs']}")


def _tier_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--cheap-model, --strong-model and --provider-id: the two cloud tiers a benchmark prices."""
    command = click.option("--provider-id", default="openai", show_default=True, help="Price table provider.")(command)
    command = click.option("--strong-model", default=None, help="Strong tier (default: tiers.strong, else gpt-4o).")(
        command
    )
    return click.option("--cheap-model", default=None, help="Cheap tier (default: tiers.cheap, else gpt-4o-mini).")(
        command
    )


def _tier_prices(
    settings: Settings, cheap_model: str | None, strong_model: str | None, provider_id: str
) -> tuple[TierPrice, TierPrice]:
    from agent.benchmarks.routing import tier_price
    from agent.pricing.prices import PriceBook

    prices = PriceBook(settings.pricing.overrides, settings.pricing.local_usd_per_hour)
    try:
        cheap = tier_price(prices, cheap_model or settings.tiers.cheap or "gpt-4o-mini", provider_id)
        strong = tier_price(prices, strong_model or settings.tiers.strong or "gpt-4o", provider_id)
    except ValueError as e:
        _fail(str(e))
    return cheap, strong


@bench.command("routing")
@click.option(
    "--prompts",
    "prompts_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with prompt, weak_correct, strong_correct.",
)
@click.option("--limit", type=int, default=None, help="Use the first N rows (after leaving contaminated ones out).")
@click.option("--router", "artifact", default=None, type=click.Path(dir_okay=False), help="Artifact to use.")
@_tier_options
@click.option("--output-tokens", default=200, show_default=True, help="Answer length assumed for the costs.")
@click.option("--include-contaminated", is_flag=True, help="Keep rows flagged in RouteLLM's training list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_routing(
    obj: _Context,
    prompts_file: str,
    limit: int | None,
    artifact: str | None,
    cheap_model: str | None,
    strong_model: str | None,
    provider_id: str,
    output_tokens: int,
    include_contaminated: bool,
    as_json: bool,
) -> None:
    """Route labelled prompts with the real router; strong share, accuracy and cost per threshold."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.benchmarks.routing import embed_in_batches, run_routing_bench
    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder
    from agent.routing.artifact import build_router_model
    from agent.routing.router import Router
    from agent.routing.training import read_labelled

    settings = obj.settings()
    rows = read_labelled(Path(prompts_file))
    kept = [r for r in rows if include_contaminated or not r.contaminated]
    kept = kept[:limit] if limit is not None else kept
    if not kept:
        _fail(f"{prompts_file}: no rows to route")
    cheap, strong = _tier_prices(settings, cheap_model, strong_model, provider_id)
    model, problem = build_router_model(settings, Path(artifact) if artifact else None)
    router = Router({"cheap": cheap.model, "strong": strong.model}, settings.routing, model, problem)
    store = ModelStore(settings.models_dir, settings.share_dir)
    embedder = OnnxEmbedder(store.resolve(settings.cache.embedding_model),
                            store.resolve(settings.cache.embedding_tokenizer), threads=os.cpu_count() or 1)  # fmt: skip
    with Progress(disable=as_json, transient=True) as bar:
        task = bar.add_task("embedding prompts", total=len(kept))
        vectors = embed_in_batches(embedder.embed, [r.prompt for r in kept], lambda n: bar.advance(task, n))
    result = run_routing_bench(kept, vectors, router, cheap, strong, output_tokens)
    result["excluded_contaminated"] = (
        len(rows) - len([r for r in rows if not r.contaminated]) if not include_contaminated else 0
    )
    result["file"] = Path(prompts_file).name
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['file']}: {result['rows']} prompts ({result['excluded_contaminated']} contaminated left out), "
        f"scoring by {result['scoring']}{' (' + problem + ')' if problem else ''}; "
        f"all-strong accuracy {result['all_strong_accuracy']}, all-weak {result['all_weak_accuracy']}"
    )
    click.echo(
        f"at 95% of all-strong quality: strong share {result['strong_share_at_95']}, "
        f"cost reduction {result['cost_reduction_at_95']} (threshold {result['threshold_at_95']}); "
        f"decision p50 {result['decision_ms_p50']} ms"
    )
    click.echo(f"{'threshold':>9} {'strong':>7} {'accuracy':>8} {'quality':>7} {'saved':>6}")
    for p in result["sweep"]:
        click.echo(f"{p['threshold']:>9.3f} {p['strong_share']:>7.3f} {p['accuracy']:>8.3f} "
                   f"{p['quality_retained'] or 0:>7.3f} {p['cost_reduction'] or 0:>6.3f}")  # fmt: skip


@bench.command("compress")
@click.option(
    "--prompts",
    "prompts_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with prompt (a string) or turns (a list of strings).",
)
@click.option("--limit", type=int, default=None, help="Use the first N rows.")
@click.option("--concat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Join every K rows into one message (long inputs for lossy compression).")  # fmt: skip
@click.option("--lossy/--no-lossy", default=None, help="Lossy compression on or off (default: as configured).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_compress(
    obj: _Context, prompts_file: str, limit: int | None, concat: int, lossy: bool | None, as_json: bool
) -> None:
    """Prompt optimiser: tokens after / before, ms per 1k tokens, numbers and names kept."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.benchmarks.compress import read_conversations, run_compress_bench
    from agent.models.store import ModelStore
    from agent.optimizer import PromptOptimizer

    settings = obj.settings()
    config = settings.optimizer.model_copy(update={"enabled": True} | ({"lossy": lossy} if lossy is not None else {}))
    conversations = read_conversations(Path(prompts_file), limit, concat)
    if not conversations:
        _fail(f"{prompts_file}: no prompts")
    optimizer = PromptOptimizer(config, ModelStore(settings.models_dir, settings.share_dir))
    try:
        with Progress(disable=as_json, transient=True) as bar:
            task = bar.add_task("optimising", total=len(conversations))
            result = run_compress_bench(conversations, optimizer, lambda n: bar.advance(task, n))
    finally:
        optimizer.close()
    result["file"] = Path(prompts_file).name
    result["concat"] = concat
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['file']}: {result['conversations']} conversations (concat {concat}), lossy "
        f"{'on (keep ' + str(result['lossy_keep_ratio']) + ')' if result['lossy'] else 'off'}: "
        f"tokens {result['tokens_before']} -> {result['tokens_after']} (ratio {result['ratio']}), "
        f"{result['ms_per_1k_tokens']} ms per 1k tokens"
    )
    click.echo(
        f"over {result['lossy_min_tokens']} tokens: {result['long_conversations']} conversations, "
        f"ratio {result['long_ratio']}, {result['long_ms_per_1k_tokens']} ms per 1k tokens; steps {result['steps']}"
    )
    click.echo(
        f"numbers and names: {result['terms_checked']} checked, "
        f"{result['conversations_losing_terms']} conversations lost one"
    )
    for example in result["lost_examples"]:
        click.echo(f"  conversation {example['conversation']}: lost {', '.join(example['lost'])}")


@bench.command("replay")
@click.option(
    "--prompts",
    "prompts_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with prompt, turns (a conversation) or q1/q2 (two questions).",
)
@click.option("--limit", type=int, default=None, help="Replay the first N conversations.")
@click.option("--repeat", default=1, show_default=True, help="Send the whole file this many times.")
@_tier_options
@click.option("--max-tokens", default=48, show_default=True, help="Answer length asked of every request.")
@click.option("--cascade", is_flag=True, help="Local model first, escalating when unsure.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_replay(
    obj: _Context,
    prompts_file: str,
    limit: int | None,
    repeat: int,
    cheap_model: str | None,
    strong_model: str | None,
    provider_id: str,
    max_tokens: int,
    cascade: bool,
    as_json: bool,
) -> None:
    """Replay prompts through optimiser, cache and router; cost against all-strong and all-cheap."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.benchmarks.replay import read_conversations, run_replay

    settings = obj.settings()
    conversations = read_conversations(Path(prompts_file), limit) * max(repeat, 1)
    cheap, strong = _tier_prices(settings, cheap_model, strong_model, provider_id)
    routing = {"cascade": True} if cascade else {}
    with Progress(disable=as_json, transient=True) as bar:
        task = bar.add_task("replaying", total=len(conversations))
        result = run_replay(
            settings, conversations, cheap, strong, max_tokens, lambda n: bar.advance(task, n), **routing
        )
    result["file"] = Path(prompts_file).name
    result["cascade"] = cascade
    if as_json:
        click.echo(json.dumps(result))
        return
    saved = result["saved_by"]
    click.echo(
        f"{result['file']}: {result['requests']} requests, answered by {result['answered_by']}; "
        f"paid {result['total_cost_usd']} USD vs all-strong {result['all_strong_cost_usd']}, "
        f"all-cheap {result['all_cheap_cost_usd']}"
    )
    click.echo(
        f"saved vs all-strong {result['saved_vs_all_strong']}: cache {saved['cache']}, routing {saved['routing']}, "
        f"compression {saved['compression']}"
    )


@bench.command("forecast")
@click.option("--history", "history_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON lines of requests: ts, user, department, feature, model, cost_micro_usd.")  # fmt: skip
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON lines of incidents (subject, start, end, kind, factor): score runaway detection.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_forecast(obj: _Context, history_file: str, labels_file: str | None, as_json: bool) -> None:
    """Month-end forecasts at days 5, 10 and 20 against the naive run-rate (MAPE); with --labels,
    the runaway detector's recall on loops of 10x and more, its delay and its false alarms."""
    from pathlib import Path

    from agent.benchmarks.forecast import (
        daily_rollup,
        evaluate_anomalies,
        evaluate_forecasts,
        read_history,
        read_labels,
    )

    rows = read_history(Path(history_file))
    first, series = daily_rollup(rows)
    result: dict[str, Any] = {"forecast": evaluate_forecasts(first, series)}
    if labels_file is not None:
        result["anomaly"] = evaluate_anomalies(rows, read_labels(Path(labels_file)))
    if as_json:
        click.echo(json.dumps(result))
        return
    f = result["forecast"]
    click.echo(f"{f['subjects']} subjects, {f['subject_months']} subject-months forecast")
    click.echo(f"{'day':>4} {'MAPE':>7} {'naive':>7}")
    for day, mape in f["mape"].items():
        click.echo(f"{day:>4} {mape if mape is not None else '-':>7} {f['naive_mape'][day] or '-':>7}")
    if "anomaly" in result:
        a = result["anomaly"]
        click.echo(f"runaways of 10x and more: recall {a['recall_10x']} ({a['recall_10x_within_5_min']} within 5 min), "
                   f"median delay {a['median_delay_s']} s; {a['false_alarms']} false alarms "
                   f"({a['false_alarms_per_subject_month']} per subject-month)")  # fmt: skip


@bench.command("similarity")
@click.option("--n", "sizes", default="100000,1000000", show_default=True, help="Stored vectors, comma-separated.")
@click.option("--dtype", "dtypes", default="float32,float16,int8", show_default=True, help="Storage types.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_similarity(obj: _Context, sizes: str, dtypes: str, as_json: bool) -> None:
    """Top-k search speed: our kernels vs numpy and faiss, against the memory-bandwidth floor."""
    settings = obj.settings()
    from agent.bundle import direct_numba_cache

    direct_numba_cache(settings.paths.cache_dir / "numba")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agent.benchmarks.similarity import format_markdown, run_similarity_bench

    try:
        result = run_similarity_bench([int(n) for n in sizes.split(",")], dtypes.split(","))
    except ValueError as e:
        _fail(f"bad --n or --dtype: {e}")
    click.echo(json.dumps(result) if as_json else format_markdown(result))
