"""Migration 0002 on a database written by 0001: existing users keep what they could do
(ACCOUNTADMIN), existing jobs get an owner, and the schema matches the ORM."""

from datetime import datetime

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text

from services.control.core.authorization import load_access
from services.control.store.database import ALEMBIC_INI, Store, create_db_engine


def migrate_to(engine, revision):
    cfg = AlembicConfig(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def test_upgrade_from_0001_keeps_existing_users_able(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_db_engine(url)
    migrate_to(engine, "0001")
    now = datetime(2025, 1, 1)
    with engine.begin() as c:
        c.execute(text("INSERT INTO accounts VALUES ('acct', :now)"), {"now": now})
        for user in ("u1", "u2"):
            c.execute(text("INSERT INTO users (id, account_id, name, created_on) "
                           "VALUES (:id, 'acct', :id, :now)"), {"id": user, "now": now})
        c.execute(text(
            "INSERT INTO jobs (id, account_id, user_id, status, progress, base_model, model_name,"
            " task_type, training_query, options, created_on, trained_tokens, epoch, step,"
            " total_steps, training_rows, validation_rows, truncated_rows, submit_attempts,"
            " version) VALUES ('ft_1', 'acct', 'u1', 'SUCCESS', 1, 'b', 'public.public.m',"
            " 'INSTRUCTION', 'select 1', '{}', :now, 0, 0, 0, 0, 0, 0, 0, 0, 1)"), {"now": now})
        c.execute(text("INSERT INTO usage_records (request_id, account_id, user_id, model, "
                       "base_model, prompt_tokens, completion_tokens, created_on) VALUES "
                       "('r', 'acct', 'u1', 'b', 'b', 1, 2, :now)"), {"now": now})
    engine.dispose()

    store = Store.open(url)   # migrates to head
    try:
        with store.transaction() as tx:
            for user in ("u1", "u2"):
                access = load_access(tx, "acct", user)
                assert access.admin and "FINETUNE_USER" in access.roles
                assert tx.accounts.user_by_id(user).default_role == "ACCOUNTADMIN"
            admin_role = tx.access.role("acct", "ACCOUNTADMIN")
            assert tx.jobs.get("ft_1").owner_role_id == admin_role.id
            assert {r.name for r in tx.access.roles("acct")} == {
                "ACCOUNTADMIN", "PUBLIC", "FINETUNE_USER"}
            credits = tx.session.execute(text("SELECT credits FROM usage_records")).scalar()
            assert credits == 0
    finally:
        store.close()
