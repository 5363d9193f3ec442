"""`finetune access ...`: users, roles, API keys, GRANT / REVOKE / SHOW GRANTS.

    finetune access user create alice --default-role analyst --key
    finetune access role create analyst
    finetune access grant-role finetune_user --to-role analyst
    finetune access grant usage database sales --to-role analyst
    finetune access grant "create model" schema sales.public --to-role analyst
    finetune access grant usage model sales.public.bot --to-account acme [--to-role partner]
    finetune access show-grants --to-role analyst
    finetune access key revoke key_0123abcd

Registered in main.py as `app.add_typer(access_app, name="access")`.
"""

from __future__ import annotations

import typer
from rich.table import Table

from finetune.control.v1 import access_pb2
from services.cli import connection, views

console = views.console

access_app = typer.Typer(help="Users, roles, API keys and privileges (GRANT, REVOKE, "
                              "SHOW GRANTS).", no_args_is_help=True)
user_app = typer.Typer(help="Users of the account (ACCOUNTADMIN).", no_args_is_help=True)
role_app = typer.Typer(help="Roles of the account (ACCOUNTADMIN).", no_args_is_help=True)
key_app = typer.Typer(help="API keys: your own, or anyone's for ACCOUNTADMIN.",
                      no_args_is_help=True)
access_app.add_typer(user_app, name="user")
access_app.add_typer(role_app, name="role")
access_app.add_typer(key_app, name="key")


_client = connection.client
_rpc = connection.rpc_errors


def _on(value: str) -> tuple[str, str]:
    """`model:sales.public.bot`, `schema:sales.public`, `database:sales`, `account`."""
    kind, _, name = value.partition(":")
    return kind, name


@access_app.command()
@_rpc
def whoami():
    """Your account, user, effective roles and default role."""
    with _client() as client:
        me = client.whoami()
    console.print(f"account {me.account_id}, user {me.user_name} ({me.user_id})")
    console.print(f"roles: {', '.join(me.roles)}; default role: {me.default_role or '-'}")


# -- users ---------------------------------------------------------------------------------------

@user_app.command("create")
@_rpc
def user_create(name: str,
                default_role: str = typer.Option("", help="granted to the user, made default"),
                key: bool = typer.Option(False, help="also create an API key (shown once)")):
    """Create a user."""
    with _client() as client:
        user = client.create_user(name, default_role)
        console.print(f"created user {user.name} (default role {user.default_role or '-'})")
        if key:
            created = client.create_api_key(user.name)
            console.print(f"API key {created.info.id} for {created.info.user} (shown once):")
            print(created.key)   # plain: rich would wrap it at the terminal's width


@user_app.command("list")
@_rpc
def user_list():
    """The account's users."""
    with _client() as client:
        users = client.list_users()
    table = Table("name", "id", "default role", "created")
    for u in users:
        table.add_row(u.name, u.id, u.default_role, views.when(u.created_on))
    console.print(table)


@user_app.command("default-role")
@_rpc
def user_default_role(role: str, user: str = typer.Option("", help="another user (ACCOUNTADMIN)")):
    """Set the role that owns what the user creates (it must hold the role)."""
    with _client() as client:
        updated = client.set_default_role(role, user)
    console.print(f"user {updated.name}: default role {updated.default_role}")


# -- roles ---------------------------------------------------------------------------------------

@role_app.command("create")
@_rpc
def role_create(name: str, comment: str = typer.Option("")):
    """Create a role."""
    with _client() as client:
        role = client.create_role(name, comment)
    console.print(f"created role {role.name}")


@role_app.command("drop")
@_rpc
def role_drop(name: str):
    """Drop a role and every grant of it and to it."""
    with _client() as client:
        client.drop_role(name)
    console.print(f"dropped role {name.upper()}")


@role_app.command("list")
@_rpc
def role_list():
    """Roles (all for ACCOUNTADMIN, the ones you hold otherwise)."""
    with _client() as client:
        roles = client.list_roles()
    table = Table("name", "comment", "created")
    for r in roles:
        table.add_row(r.name, r.comment, views.when(r.created_on))
    console.print(table)


# -- grants --------------------------------------------------------------------------------------

@access_app.command("grant-role")
@_rpc
def grant_role(role: str, to_user: str = typer.Option(""), to_role: str = typer.Option("")):
    """GRANT ROLE role TO USER u | TO ROLE r (r then inherits role)."""
    with _client() as client:
        added = client.grant_role(role, to_user=to_user, to_role=to_role)
    console.print(f"granted role {role.upper()} to {to_user or to_role}"
                  + ("" if added else " (it already was)"))


@access_app.command("revoke-role")
@_rpc
def revoke_role(role: str, from_user: str = typer.Option(""), from_role: str = typer.Option("")):
    """REVOKE ROLE role FROM USER u | FROM ROLE r."""
    with _client() as client:
        removed = client.revoke_role(role, from_user=from_user, from_role=from_role)
    console.print(f"revoked role {role.upper()} from {from_user or from_role}"
                  + ("" if removed else " (it was not granted)"))


@access_app.command()
@_rpc
def grant(privilege: str = typer.Argument(..., help="USAGE, OWNERSHIP, 'CREATE MODEL', "
                                                    "'CREATE TABLE', 'CREATE DATABASE'"),
          object_type: str = typer.Argument(..., help="account, database, schema or model"),
          object_name: str = typer.Argument("", help="db, db.schema or db.schema.model"),
          to_role: str = typer.Option("", help="the role receiving it (with --to-account: a "
                                               "role of that account)"),
          to_account: str = typer.Option("", help="share a model with another account: USAGE "
                                                  "only; every role of it without --to-role")):
    """GRANT privilege ON object TO ROLE r (granting OWNERSHIP transfers it), or share a
    model: GRANT USAGE ON MODEL m TO ACCOUNT a [ROLE r]."""
    _require_grantee(to_role, to_account, "--to-role", "--to-account")
    with _client() as client:
        added = client.grant(privilege, object_type, object_name, to_role, to_account)
    console.print(f"granted {privilege.upper()} on {object_type.upper()} {object_name} to "
                  f"{_grantee(to_role, to_account)}" + ("" if added else " (it already was)"))


@access_app.command()
@_rpc
def revoke(privilege: str, object_type: str, object_name: str = typer.Argument(""),
           from_role: str = typer.Option("", help="with --from-account: a role of that account"),
           from_account: str = typer.Option("", help="end a share with another account")):
    """REVOKE privilege ON object FROM ROLE r, or end a share FROM ACCOUNT a [ROLE r]."""
    _require_grantee(from_role, from_account, "--from-role", "--from-account")
    with _client() as client:
        removed = client.revoke(privilege, object_type, object_name, from_role, from_account)
    console.print(f"revoked {privilege.upper()} on {object_type.upper()} {object_name} from "
                  f"{_grantee(from_role, from_account)}"
                  + ("" if removed else " (it was not granted)"))


def _require_grantee(role: str, account: str, role_flag: str, account_flag: str) -> None:
    if not role.strip() and not account.strip():
        raise ValueError(f"name a grantee: {role_flag}, or {account_flag} (another account: "
                         "a model's USAGE only)")


def _grantee(role: str, account: str) -> str:
    if not account:
        return role.upper()
    return f"account {account}" + (f" role {role.upper()}" if role else " (every role)")


@access_app.command("show-grants")
@_rpc
def show_grants(to_role: str = typer.Option(""), to_user: str = typer.Option(""),
                on: str = typer.Option("", help="type:name, e.g. model:sales.public.bot"),
                of_role: str = typer.Option("", help="who holds this role")):
    """SHOW GRANTS TO ROLE | TO USER | ON object | OF ROLE (none: your own)."""
    on_type, on_name = _on(on) if on else ("", "")
    with _client() as client:
        grants = client.show_grants(to_role=to_role, to_user=to_user, on_type=on_type,
                                    on_name=on_name, of_role=of_role)
    table = Table("created", "privilege", "granted on", "name", "granted to", "grantee",
                  "account", "granted by")
    for g in grants:   # account: a share's other account, empty inside this one
        table.add_row(views.when(g.created_on), g.privilege,
                      access_pb2.ObjectType.Name(g.granted_on), g.name,
                      access_pb2.GranteeType.Name(g.granted_to).removeprefix("TO_"),
                      g.grantee_name, g.grantee_account, g.granted_by)
    console.print(table)


# -- keys ----------------------------------------------------------------------------------------

@key_app.command("create")
@_rpc
def key_create(user: str = typer.Option("", help="another user (ACCOUNTADMIN)")):
    """Create an API key; it is shown once."""
    with _client() as client:
        created = client.create_api_key(user)
    console.print(f"API key {created.info.id} for {created.info.user} (shown once):")
    print(created.key)   # plain: rich would wrap it at the terminal's width


@key_app.command("list")
@_rpc
def key_list(user: str = typer.Option("", help="another user (ACCOUNTADMIN)"),
             all_users: bool = typer.Option(False, "--all", help="every key (ACCOUNTADMIN)")):
    """API keys (ids only; keys are never shown again)."""
    with _client() as client:
        keys = client.list_api_keys(user, all_users)
    table = Table("id", "user", "created", "revoked")
    for k in keys:
        table.add_row(k.id, k.user, views.when(k.created_on), views.when(k.revoked_on))
    console.print(table)


@key_app.command("revoke")
@_rpc
def key_revoke(key_id: str):
    """Revoke an API key: it stops working at once (COMPLETE within the resolution cache TTL)."""
    with _client() as client:
        key = client.revoke_api_key(key_id)
    console.print(f"revoked {key.id} of {key.user}")
