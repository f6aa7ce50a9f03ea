"""The `cache` group, through the running agent."""

from __future__ import annotations

import click

from agent.cli.common import _Context, _Group, main, pass_ctx

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


@cache.command("train-verifier")
@click.option("--pairs", "files", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON lines with q1, q2 and duplicate (repeatable).")  # fmt: skip
@click.option("--base", required=True, type=click.Path(exists=True, file_okay=False),
              help="The sentence model to start from: config.json, model.safetensors and tokenizer.json.")  # fmt: skip
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for default_verifier.onnx/.npz.")
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--layers", default=6, show_default=True, help="Transformer layers of the base model to keep.")
@click.option("--seed", default=1, show_default=True)
@click.option("--calibrate-only", is_flag=True, help="Keep the ONNX file in --out; calibrate and report again.")
@pass_ctx
def cache_train_verifier(
    obj: _Context,
    files: tuple[str, ...],
    base: str,
    out: str,
    epochs: float,
    layers: int,
    seed: int,
    calibrate_only: bool,
) -> None:
    """Fine-tune and calibrate the cache verifier (needs PyTorch and transformers; off-line only)."""
    import hashlib
    import os
    from pathlib import Path

    import numpy as np

    from agent.benchmarks.cache_quality import read_pairs
    from agent.cache import verifier_training as vt
    from agent.cache.verifier import ONNX_NAME, PairVerifier, VerifierArtifact
    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder
    from agent.routing.training import file_sha256

    settings = obj.settings()
    sources = {Path(f).name: read_pairs(Path(f), None) for f in files}
    pairs = [p for rows in sources.values() for p in rows]
    split = {name: [p for p in pairs if vt.split_of(p) == name] for name in (vt.TRAIN, vt.CALIBRATE, vt.HELD_OUT)}
    # Precision can only be measured on a file with both kinds of pair (GPTCache's are all duplicates).
    measured = [p for rows in sources.values() if len({r.duplicate for r in rows}) == 2 for p in rows]
    split[vt.CALIBRATE] = [p for p in measured if vt.split_of(p) == vt.CALIBRATE]
    split[vt.HELD_OUT] = [p for p in measured if vt.split_of(p) == vt.HELD_OUT]
    click.echo(", ".join(f"{name}: {len(rows)} pairs" for name, rows in split.items()))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    options = vt.TrainOptions(Path(base), epochs=epochs, layers=layers, seed=seed, threads=os.cpu_count() or 1)
    command = " ".join(["aifinops cache train-verifier", *(f"--pairs {Path(f).name}" for f in files),
                        f"--base {Path(base).name} --out {target.name} --epochs {epochs:g} --layers {layers}",
                        f"--seed {seed}"])  # fmt: skip
    made_by = {"command": command}
    if calibrate_only:  # the file was made by an earlier run: keep its command, add this one
        earlier = VerifierArtifact.load(target).report["command"]
        made_by = {"command": earlier, "calibrated_by": f"{command} --calibrate-only"}
    else:
        vt.fine_tune(split[vt.TRAIN], options, target / ONNX_NAME, click.echo)
    onnx_sha256 = hashlib.sha256((target / ONNX_NAME).read_bytes()).hexdigest()
    store = ModelStore(settings.models_dir, settings.share_dir)
    tokenizer = store.resolve(settings.cache.embedding_tokenizer)
    embedder = OnnxEmbedder(store.resolve(settings.cache.embedding_model), tokenizer, threads=os.cpu_count() or 1)
    # Scored by the agent's own code on the shipped int8 file; the table only needs the ONNX file.
    placeholder = vt.calibration_table(vt.Scored([], np.zeros(0), np.zeros(0, bool), np.zeros(0)))
    vt.save_artifact(target, placeholder, [], {}, onnx_sha256)
    verifier = PairVerifier(VerifierArtifact.load(target), tokenizer, threads=os.cpu_count() or 1)
    scored = {name: vt.score_pairs(split[name], embedder.embed, verifier.scores)
              for name in (vt.CALIBRATE, vt.HELD_OUT)}  # fmt: skip
    table = vt.calibration_table(scored[vt.CALIBRATE])
    report = vt.report(scored[vt.HELD_OUT], table) | made_by | {
        "data": {Path(f).name: file_sha256(Path(f)) for f in files},
        "pairs": {name: len(rows) for name, rows in split.items()},
        "base": Path(base).name,
        "onnx_sha256": onnx_sha256,
    }
    seen = [p for p in pairs if vt.split_of(p) != vt.HELD_OUT]  # trained or calibrated on: no benchmark scores them
    vt.save_artifact(target, table, seen, report, onnx_sha256)
    click.echo(f"{'min_precision':>13} {'threshold':>9} {'held-out precision':>18} {'recall':>7}")
    for row in report["held_out"]:
        click.echo(f"{row['min_precision']:13.2f} {row['threshold']:9.4f} {row['precision'] or 0:18.4f} "
                   f"{row['recall']:7.4f}")  # fmt: skip
    click.echo(f"saved {target / ONNX_NAME} and {target / 'default_verifier.npz'}")
