"""ResolveModel on behalf of a user (control's evaluations calling COMPLETE): only with the
service token, and then with that user's privileges as they are now."""

import pytest
from control_testbed import (SERVICE_TOKEN, instruction_rows, load_rows, new_account,
                             new_user, succeed)

from finetune.control.v1 import internal_pb2
from services.common.errors import PermissionDenied, Unauthenticated
from services.control.api.internal import ModelResolutionServicer
from services.control.core.jobs import CreateJob
from services.control.domain.privileges import Privilege, SecurableObject


@pytest.fixture
def model(control, admin, dispatcher):
    load_rows(control, admin.account_id, "train", instruction_rows(4))
    job = control.fine_tuning.create(admin, CreateJob(
        model="m", base_model="tiny-base", training_query="SELECT * FROM train"))
    succeed(control, dispatcher, job)
    return control.registry.get(admin, "m")


def test_only_the_service_token_may_act_for_a_user(control, admin, admin_key, model):
    with pytest.raises(Unauthenticated, match="only the service token"):
        control.resolution.resolve(admin_key, "m", admin.account_id, admin.user_id)
    with pytest.raises(Unauthenticated):
        control.resolution.resolve("", "m", admin.account_id, admin.user_id)
    resolved = control.resolution.resolve(SERVICE_TOKEN, "m", admin.account_id, admin.user_id)
    assert (resolved.account_id, resolved.user_id) == (admin.account_id, admin.user_id)
    assert resolved.adapter.id == model.id
    with pytest.raises(Unauthenticated):   # the service token alone is nobody's key
        control.resolution.resolve(SERVICE_TOKEN, "m")


def test_the_user_must_exist_in_that_account(control, admin, model):
    other, _ = new_account(control, "other")
    with pytest.raises(Unauthenticated):
        control.resolution.resolve(SERVICE_TOKEN, "m", admin.account_id, other.user_id)
    with pytest.raises(Unauthenticated):
        control.resolution.resolve(SERVICE_TOKEN, "m", admin.account_id, "usr_nobody")


def test_privileges_are_the_users_as_of_now(control, admin, model):
    user, _ = new_user(control, admin.account_id, "analyst", roles=("FINETUNE_USER",))
    with pytest.raises(PermissionDenied):
        control.resolution.resolve(SERVICE_TOKEN, "m", user.account_id, user.user_id)
    grant = SecurableObject.model(model.name)
    control.directory.grant_privilege(admin, Privilege.USAGE, grant, "FINETUNE_USER")
    assert control.resolution.resolve(SERVICE_TOKEN, "m", user.account_id,
                                      user.user_id).user_id == user.user_id
    control.store.run(lambda tx: tx.access.delete_grants_on(admin.account_id, grant))
    with pytest.raises(PermissionDenied):   # a revoked USAGE stops an evaluation's calls
        control.resolution.resolve(SERVICE_TOKEN, "m", user.account_id, user.user_id)


async def test_the_servicer_passes_the_fields(control, admin, model):
    servicer = ModelResolutionServicer(control.resolution, control.inference_usage, 30)
    answer = await servicer.ResolveModel(internal_pb2.ResolveModelRequest(
        api_key=SERVICE_TOKEN, model="m", on_behalf_of_account_id=admin.account_id,
        on_behalf_of_user_id=admin.user_id), None)
    assert (answer.user_id, answer.adapter_id) == (admin.user_id, model.id)
