"""`foresight keys`: issue, list, rotate and revoke a tenant's API keys. A key's secret is printed once, by
the command that makes it; everything else names keys by their public id."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from onboarding import output
from onboarding.tenants import SCOPES_HELP, NewKey, parse_duration, parse_key_id, parse_scopes, validate_name
from onboarding.tenants_cli import AdminUrl, Json, StateDir, onboarder
from service.security.vault_keys import KeyInfo

app = typer.Typer(cls=output.UsageErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False)


Tenant = Annotated[str, typer.Argument(help="The tenant's name.", show_default=False)]
KeyId = Annotated[str, typer.Argument(help="The key's id (a whole key pasted is taken as its id).", show_default=False)]


@app.command()
def issue(
    tenant: Tenant,
    scopes: Annotated[str, typer.Option(help=f"Comma-separated: {SCOPES_HELP}.")] = "read,write",
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d or 12h (default: no expiry).")] = None,
    admin_url: AdminUrl = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """A new key for TENANT, printed once."""
    with output.reported(as_json):
        validate_name(tenant)
        key_scopes = parse_scopes(scopes)
        lifetime = parse_duration(ttl, "--ttl") if ttl else None
        with onboarder(admin_url, state_dir) as onboard:
            new = onboard.issue_key(tenant, key_scopes, lifetime)
        _print_new_key(new, as_json)


@app.command("list")
def list_(tenant: Tenant, admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """TENANT's keys: id, scopes, state, dates (never the secret or its hash)."""
    with output.reported(as_json):
        validate_name(tenant)
        with onboarder(admin_url, state_dir) as onboard:
            keys = onboard.list_keys(tenant)
        if as_json:
            output.emit_json({"tenant": tenant, "keys": [key_json(k) for k in keys]})
            return
        output.print_table(keys_table(keys, title=f"Keys of {tenant}"))


@app.command()
def rotate(
    key_id: KeyId,
    overlap: Annotated[
        str, typer.Option(help="How long the old key keeps working, e.g. 1h or 7d; 0s stops it at once.")
    ] = "24h",
    admin_url: AdminUrl = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Replace KEY_ID with a new key (printed once); the old one works for --overlap more, then expires."""
    with output.reported(as_json):
        key_id = parse_key_id(key_id)
        window = parse_duration(overlap, "--overlap", allow_zero=True)  # 0s: the old key stops at once
        with onboarder(admin_url, state_dir) as onboard:
            new = onboard.rotate_key(key_id, window)
        _print_new_key(new, as_json)


@app.command()
def revoke(key_id: KeyId, admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Refuse KEY_ID from now on, on every listener (within a second)."""
    with output.reported(as_json):
        key_id = parse_key_id(key_id)
        with onboarder(admin_url, state_dir) as onboard:
            info, outcome = onboard.revoke_key(key_id)
        if as_json:
            output.emit_json({**key_json(info), "warnings": outcome.warnings})
            return
        output.warn(outcome.warnings)
        output.out.print(f"Key {info.key_id} of tenant {info.tenant} revoked.")


def _print_new_key(new: NewKey, as_json: bool) -> None:
    key, info, replaced = new.key, new.info, new.replaced
    if as_json:
        record: dict[str, Any] = {**key_json(info), "api_key": key.secret, "warnings": new.warnings}
        if replaced is not None:
            record["replaces"] = {"key_id": replaced.key_id, "expires": key_json(replaced)["expires"]}
        output.emit_json(record)
        return
    output.warn(new.warnings)
    output.out.print(f"Key [bold]{key.key_id}[/] for tenant {info.tenant} (shown once; store it now):")
    output.out.print(key.secret, markup=False)
    if replaced is not None and replaced.expires is not None:
        output.out.print(f"Key {replaced.key_id} keeps working until {replaced.expires:%Y-%m-%d %H:%M:%S} UTC.")


def key_state(info: KeyInfo, now: dt.datetime) -> str:
    """`active`, `revoked` or `expired`: Vault stores only the first two, and a key past its expiry (a rotated
    key after its overlap, a --ttl run out) is refused by the service all the same."""
    if info.state == "active" and not info.usable_at(now):
        return "expired"
    return info.state


def key_json(info: KeyInfo) -> dict[str, Any]:
    """A key for scripts: everything but its hash, with its state as of now."""
    return {**info.model_dump(mode="json", exclude={"hash"}), "state": key_state(info, dt.datetime.now(dt.UTC))}


def keys_table(keys: Sequence[KeyInfo], title: str = "Keys") -> Table:
    """For `output.print_table`: ids never wrap, so they can be copied whole."""
    now = dt.datetime.now(dt.UTC)
    table = Table(title=title)
    table.add_column("key id", no_wrap=True)
    for header in ("scopes", "state", "created", "expires"):
        table.add_column(header)
    table.add_column("rotated to", no_wrap=True)
    for k in keys:
        table.add_row(k.key_id, ", ".join(k.scopes), key_state(k, now), f"{k.created:%Y-%m-%d %H:%M}",
                      f"{k.expires:%Y-%m-%d %H:%M}" if k.expires else "-", k.rotated_to or "-")
    return table
