"""The `policy` group (admins): write, sign, publish and sync the signed policy."""

from __future__ import annotations

import sys

import click

from agent.cli.common import _Context, _fail, _Group, main, pass_ctx

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
