"""Authentication: user keys for the public API, the service token for the internal one;
the bootstrap admin key on first start only."""

import stat

import pytest
from control_components import control_components
from control_testbed import SERVICE_TOKEN, FakeDispatcher, acting_as, word_tokenizers

from finetune.control.v1 import access_pb2
from services.common.errors import Unauthenticated
from services.control.api.access import AccessServicer
from services.control.api.principals import user
from services.control.domain.principals import Principal, ServicePrincipal

PUBLIC = "/finetune.control.v1.FineTuningService/ListFineTuningJobs"
INTERNAL = ["/finetune.control.v1.JobReportingService/ReportProgress",
            "/finetune.control.v1.ModelResolutionService/ResolveModel",
            "/finetune.control.v1.ModelResolutionService/ReportUsage"]


async def test_user_key_on_public_methods(control, admin_key):
    principal = await control.authenticator(PUBLIC, admin_key)
    assert isinstance(principal, Principal)
    assert (principal.account_id, principal.user_name) == ("default", "admin")


@pytest.mark.parametrize("token", [None, "", "ft_not_a_key", SERVICE_TOKEN])
async def test_public_methods_refuse_anything_else(control, token):
    with pytest.raises(Unauthenticated):
        await control.authenticator(PUBLIC, token)


@pytest.mark.parametrize("method", INTERNAL)
async def test_internal_methods_take_only_the_service_token(control, admin_key, method):
    assert isinstance(await control.authenticator(method, SERVICE_TOKEN), ServicePrincipal)
    for token in (None, admin_key, SERVICE_TOKEN + "x"):
        with pytest.raises(Unauthenticated):
            await control.authenticator(method, token)


async def test_whoami(admin, control):
    with acting_as(admin):
        me = await AccessServicer(control.directory).WhoAmI(access_pb2.WhoAmIRequest(), None)
    assert (me.account_id, me.user_id, me.user_name) == ("default", admin.user_id, "admin")
    assert list(me.roles) == ["ACCOUNTADMIN", "FINETUNE_USER", "PUBLIC"]
    assert me.default_role == "ACCOUNTADMIN" and me.key_id == admin.key_id


def test_the_service_principal_is_not_a_user():
    with acting_as(ServicePrincipal()), pytest.raises(Unauthenticated):
        user()


def test_bootstrap_key_is_private_and_created_once(control, admin_key, tiny_base):
    path = control.config.bootstrap_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_key.startswith("ft_")
    with control_components(control.config, tiny_base, dispatcher=FakeDispatcher(),
                            tokenizers=word_tokenizers()) as again:
        assert path.read_text().strip() == admin_key  # not rewritten
        with again.store.transaction() as tx:
            from services.control.store.tables import AccountRow, ApiKeyRow
            assert tx.session.query(AccountRow).count() == 1
            assert tx.session.query(ApiKeyRow).count() == 1
            stored = tx.session.query(ApiKeyRow).one().key_hash
        assert admin_key not in stored  # only the hash is kept
