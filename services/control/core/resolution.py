"""Model resolution for the inference service (its usage reports: core.usage).

Inference presents the end user's key with every COMPLETE; control authenticates it, decides
whether that user may use the model (FINETUNE_USER, and USAGE on a fine-tuned model: granted in
its account, or shared by another account whose model it names `account.db.schema.model`), and
says where the weights are. Inference caches an answer for at most `cache_ttl_seconds`, which bounds
how long a revoked key or grant still works there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from services.common.base_models import BaseModelSpec
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from services.common.keys import tokens_equal
from services.control.core.authorization import load_access
from services.control.domain.models import RegisteredModel
from services.control.domain.names import shared_model_name
from services.control.domain.principals import Principal
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.database import Store


@dataclass(frozen=True)
class Resolved:
    account_id: str
    user_id: str
    model: str
    base: BaseModelSpec
    adapter: RegisteredModel | None   # None for a base model


class ModelResolution:
    def __init__(self, store: Store, base_models: Mapping[str, BaseModelSpec],
                 service_token: str = ""):
        self._store = store
        self._base_models = base_models
        self._service_token = service_token

    def _delegated(self, api_key: str, account_id: str, user_id: str) -> Principal:
        """Control's own evaluations call COMPLETE for a user: only the service token may
        claim to act for someone, and then the user must exist in that account."""
        if not tokens_equal(api_key, self._service_token):
            raise Unauthenticated("only the service token may act on behalf of a user")
        found = self._store.run(lambda tx: tx.accounts.user_by_id(user_id)) if user_id else None
        if found is None or found.account_id != account_id:
            raise Unauthenticated(f"user {user_id} of account {account_id} does not exist")
        return Principal(account_id=account_id, user_id=found.id, user_name=found.name,
                         key_id="")

    def resolve(self, api_key: str, model: str, on_behalf_of_account_id: str = "",
                on_behalf_of_user_id: str = "") -> Resolved:
        delegated = bool(on_behalf_of_account_id or on_behalf_of_user_id)
        principal: Principal | None
        if delegated:
            principal = self._delegated(api_key, on_behalf_of_account_id, on_behalf_of_user_id)
        else:
            principal = self._store.run(lambda tx: tx.accounts.authenticate(api_key)) \
                if api_key else None
        if principal is None:
            raise Unauthenticated("invalid API key")
        model = (model or "").strip()
        if not model:
            raise InvalidArgument("model is required")

        def find(tx) -> RegisteredModel | None:
            # Privileges as of now, on every COMPLETE (inference caches only briefly).
            access = load_access(tx, principal.account_id, principal.user_id)
            access.require(Privilege.FINETUNE, SecurableObject.account())
            if model in self._base_models:
                return None
            try:
                target = SecurableObject.model(model)
            except InvalidArgument:  # not a name any model could have: nothing to hide
                raise NotFound(f"model {model} does not exist") from None
            access.require(Privilege.USAGE, target)  # before existence; a share across accounts
            owner = target.account_id or principal.account_id
            shared = owner != principal.account_id
            found = tx.models.get(owner, target.name)
            if found is None or (shared and not found.ready):
                named = shared_model_name(owner, target.name) if shared else target.name
                raise NotFound(f"model {named} does not exist")
            if not found.ready and not delegated:  # a job's candidate: its evaluations only
                raise FailedPrecondition(f"model {found.name} is being evaluated by job "
                                         f"{found.job_id} and cannot be used yet")
            return found

        adapter = self._store.run(find)
        if adapter is None:
            base = self._base_models[model]
            return Resolved(principal.account_id, principal.user_id, base.name, base, None)
        # Another account's model keeps its four-part name: usage rows then name its owner.
        canonical = adapter.name if adapter.account_id == principal.account_id else \
            shared_model_name(adapter.account_id, adapter.name)
        adapter_base = self._base_models.get(adapter.base_model)
        if adapter_base is None:
            raise FailedPrecondition(
                f"model {canonical} needs base model {adapter.base_model}, which this "
                "deployment no longer serves")
        return Resolved(principal.account_id, principal.user_id, canonical, adapter_base,
                        adapter)
