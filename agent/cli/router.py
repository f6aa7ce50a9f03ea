"""The `router` group: train the difficulty model."""

from __future__ import annotations

import os
from typing import Any

import click

from agent.cli.common import _Context, _Group, main, pass_ctx

# -- router -----------------------------------------------------------------------------------


# Labelled prompts for training and cross-validation (repeatable).
_data_option = click.option(
    "--data",
    "files",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON lines with prompt, weak_correct, strong_correct (repeatable).",
)


@main.group(cls=_Group)
def router() -> None:
    """The learned difficulty score that picks a tier."""


@router.command("train")
@_data_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .npz artifact.")
@click.option("--holdout", default=0.2, show_default=True, help="Share of rows kept out for the report.")
@click.option("--seed", default=1, show_default=True)
@pass_ctx
def router_train(obj: _Context, files: tuple[str, ...], out: str, holdout: float, seed: int) -> None:
    """Train the difficulty model; print its held-out report; save the artifact."""
    from pathlib import Path

    from rich.progress import Progress

    from agent.routing.training import file_sha256, read_labelled, train_router

    settings = obj.settings()
    rows = [row for f in files for row in read_labelled(Path(f))]
    with Progress(transient=True) as bar:
        embed = _batched_embedder(settings, bar, len(rows))
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


@router.command("cv")
@_data_option
@click.option("--folds", default=5, show_default=True)
@click.option("--seeds", default="1,2,3", show_default=True, help="Fold seeds, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def router_cv(obj: _Context, files: tuple[str, ...], folds: int, seeds: str, as_json: bool) -> None:
    """Cross-validate the training method: strong share at 95% quality and AUC per file."""
    import json
    from pathlib import Path

    from rich.progress import Progress

    from agent.routing.training import cross_validate, inputs_for, read_labelled

    rows = [row for f in files for row in read_labelled(Path(f))]
    with Progress(transient=True, disable=as_json) as bar:
        inputs = inputs_for([r.prompt for r in rows], _batched_embedder(obj.settings(), bar, len(rows)))
    result = cross_validate(rows, inputs, folds, tuple(int(s) for s in seeds.split(",")))
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{folds}-fold cross-validation, fold seeds {seeds}; contaminated rows neither trained on nor scored")
    click.echo(f"{'file':40} {'rows':>6} {'strong@95%':>10} {'AUC':>6} {'all-weak':>8} {'all-strong':>10}")
    for source, r in result.items():
        if isinstance(r, dict):
            click.echo(f"{source:40} {r['rows']:6d} {r['strong_share_at_95']:10.3f} {r['auc']:6.3f} "
                       f"{r['all_weak_accuracy']:8.3f} {r['all_strong_accuracy']:10.3f}")  # fmt: skip


def _batched_embedder(settings: Any, bar: Any, total: int) -> Any:
    """The cache's embedder, fed in batches of similar length, advancing a progress bar."""
    import numpy as np

    from agent.models.store import ModelStore
    from agent.providers.onnx_embedder import OnnxEmbedder

    store = ModelStore(settings.models_dir, settings.share_dir)
    embedder = OnnxEmbedder(store.resolve(settings.cache.embedding_model),
                            store.resolve(settings.cache.embedding_tokenizer), threads=os.cpu_count() or 1)  # fmt: skip
    task = bar.add_task("embedding prompts", total=total)

    def embed(texts: list[str]) -> Any:
        # Batches of similar length: padding to the longest prompt of a batch wastes less.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            vectors[batch] = embedder.embed([texts[i] for i in batch])
            bar.advance(task, len(batch))
        return vectors

    return embed
