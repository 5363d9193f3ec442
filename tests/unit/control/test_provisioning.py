"""The operator's create-account command: a new account whose administrator can log in."""

import re

from services.control.core.authorization import load_access
from services.control.provisioning import main
from services.control.store.database import Store


def test_create_account(tmp_path, capsys, control):
    home = str(control.config.home)
    assert main(["create-account", "Acme", "--admin-user", "root", "--home", home]) == 0
    key = re.search(r"shown once\): (ft_\S+)", capsys.readouterr().out).group(1)
    store = Store.open(control.config.database_url)
    try:
        principal = store.run(lambda tx: tx.accounts.authenticate(key))
        assert (principal.account_id, principal.user_name) == ("acme", "root")
        assert store.run(lambda tx: load_access(tx, "acme", principal.user_id)).admin
    finally:
        store.close()
    assert main(["create-account", "acme", "--home", home]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["create-account", "not-an-id", "--home", home]) == 2
