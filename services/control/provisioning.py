"""Operator tasks on the metadata database, outside any account (accounts never see each other,
so no API creates them):

    python -m services.control.provisioning create-account acme --admin-user root --home DIR

takes the control service's flags (--home, --database-url, ...) to find the database, creates
the account with its system roles and an administrator holding ACCOUNTADMIN, and prints that
administrator's API key once.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import IntegrityError

from services.common.errors import InvalidArgument
from services.control.config import load_config
from services.control.core.access_control import create_account
from services.control.core.clock import utc_now
from services.control.domain.names import identifier
from services.control.store.database import Store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.control.provisioning",
                                description="Operator tasks on the control metadata database; "
                                            "other flags are the control service's.")
    p.add_argument("command", choices=["create-account"])
    p.add_argument("account", help="the new account's id (an identifier)")
    p.add_argument("--admin-user", default="admin", help="its first user (ACCOUNTADMIN)")
    args, rest = p.parse_known_args(argv)
    try:
        account = identifier(args.account, "account id")
    except InvalidArgument as exc:
        print(exc.message, file=sys.stderr)
        return 2
    store = Store.open(load_config(rest).database_url)
    try:
        new = store.run(lambda tx: create_account(tx, account, args.admin_user, utc_now()))
    except IntegrityError:
        print(f"account {account} already exists", file=sys.stderr)
        return 1
    except InvalidArgument as exc:
        print(exc.message, file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"created account {new.account_id}; user {args.admin_user} holds ACCOUNTADMIN")
    print(f"API key (shown once): {new.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
