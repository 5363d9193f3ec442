"""The model registry as callers see it: base models from the catalog, fine-tuned models of
their account, and the files of a model's output folder. Listing shows the models the caller
holds USAGE on; describing one needs USAGE, its files and deleting it need OWNERSHIP. Models
other accounts share with the caller are listed apart (`shared`) and described as a
`RegisteredModel.shared_view`: no files, no lineage."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Generator, Mapping

from services.common.artifacts import ArtifactStore
from services.common.base_models import BaseModelSpec
from services.common.errors import InvalidArgument, NotFound
from services.control.core import paging
from services.control.core.authorization import Authorizer, load_access
from services.control.core.clock import Clock, utc_now
from services.control.domain.models import RegisteredModel
from services.control.domain.names import qualified_name
from services.control.domain.principals import Principal
from services.control.domain.privileges import Privilege, SecurableObject
from services.control.store.database import Store

ARTIFACT_CHUNK_BYTES = 1 << 20


def base_model_named(base_models: Mapping[str, BaseModelSpec], name: str) -> BaseModelSpec:
    """The catalog's base model `name`; INVALID_ARGUMENT naming the ones there are."""
    if not name:
        raise InvalidArgument("base_model is required")
    base = base_models.get(name)
    if base is None:
        raise InvalidArgument(f"unknown base model {name!r} (available: "
                              f"{', '.join(sorted(base_models)) or 'none'})")
    return base


@dataclass(frozen=True)
class ModelPage:
    models: list[RegisteredModel]
    next_page_token: str


class ModelRegistry:
    def __init__(self, store: Store, artifacts: ArtifactStore,
                 base_models: Mapping[str, BaseModelSpec], authorizer: Authorizer,
                 clock: Clock = utc_now):
        self._store = store
        self._authorizer = authorizer
        self._artifacts = artifacts
        self._base_models = base_models
        self._clock = clock

    def base_models(self) -> list[BaseModelSpec]:
        return [self._base_models[name] for name in sorted(self._base_models)]

    def list(self, principal: Principal, page_size: int = 0, page_token: str = "") -> ModelPage:
        """The account's models the caller holds USAGE on, by name."""
        access = self._authorizer.access(principal)

        def visible(model: RegisteredModel) -> bool:
            return access.allows(Privilege.USAGE, SecurableObject.model(model.name))

        size = paging.page_size(page_size)
        after = str(paging.decode_token(page_token)[0]) if page_token else None
        models: list[RegisteredModel] = []
        while len(models) <= size:
            # run() calls the lambda at once, so it sees this round's `after`
            batch = self._store.run(
                lambda tx: tx.models.page(principal.account_id, size + 1, after))  # noqa: B023
            models += [m for m in batch if visible(m)]
            if len(batch) <= size:
                break
            after = batch[-1].name
        token = ""
        if len(models) > size:
            models = models[:size]
            token = paging.encode_token([models[-1].name])
        return ModelPage(models, token)

    def shared(self, principal: Principal, page_size: int = 0,
               page_token: str = "") -> ModelPage:
        """The models other accounts share with the caller (its account, or a role it holds),
        by their four-part names."""
        def work(tx) -> list[RegisteredModel]:
            access = load_access(tx, principal.account_id, principal.user_id)
            found = (tx.models.get(owner, name) for owner, name in access.shared)
            return sorted((m.shared_view(principal.account_id) for m in found
                           if m is not None and m.ready), key=lambda m: m.name)

        size = paging.page_size(page_size)
        after = str(paging.decode_token(page_token)[0]) if page_token else ""
        models = [m for m in self._store.run(work) if m.name > after]
        token = paging.encode_token([models[size - 1].name]) if len(models) > size else ""
        return ModelPage(models[:size], token)

    def get(self, principal: Principal, name: str) -> RegisteredModel:
        """Needs USAGE on the model (PERMISSION_DENIED whether or not it exists); a model of
        another account (`account.db.schema.name`), USAGE shared with the caller."""
        target = SecurableObject.model(name)
        self._authorizer.authorize(principal, Privilege.USAGE, target)
        if not target.in_other_account(principal.account_id):
            return self._registered(principal, target.name)
        model = self._store.run(lambda tx: tx.models.get(target.account_id, target.name))
        if model is None or not model.ready:
            raise NotFound(f"model {target.account_id}.{target.name} does not exist")
        return model.shared_view(principal.account_id)

    def _registered(self, principal: Principal, name: str) -> RegisteredModel:
        canonical = str(qualified_name(name, "model name"))
        model = self._store.run(lambda tx: tx.models.get(principal.account_id, canonical))
        if model is None or not model.ready:   # a job's candidate is not registered yet
            raise NotFound(f"model {canonical} does not exist")
        return model

    def artifacts(self, model: RegisteredModel) -> builtins.list[str]:
        """The files of the model's folder; none in another account's view of it."""
        return [] if model.shared_from else self._artifacts.list(model.adapter_uri)

    def delete(self, principal: Principal, name: str) -> None:
        """Unregister the model. Its files stay with the job that produced them (a running job
        may continue from them); its id is never handed out again. Needs OWNERSHIP."""
        target = SecurableObject.model(name)
        self._authorizer.authorize(principal, Privilege.OWNERSHIP, target)
        canonical = target.name   # the caller's own account's, once allowed

        def work(tx):
            live = tx.models.get(principal.account_id, canonical)
            if live is None or not live.ready:   # a candidate goes with its job
                return None
            deleted = tx.models.delete(principal.account_id, canonical, self._clock())
            if deleted is not None:  # its grants go with it: a new model of the name starts clean
                tx.access.delete_grants_on(principal.account_id,
                                           SecurableObject.model(canonical))
            return deleted
        if self._store.run(work) is None:
            raise NotFound(f"model {canonical} does not exist")

    def artifact_chunks(self, principal: Principal, name: str,
                        artifact: str) -> Generator[bytes, None, None]:
        """A file of the model's output folder, in chunks. Needs OWNERSHIP."""
        target = SecurableObject.model(name)
        self._authorizer.authorize(principal, Privilege.OWNERSHIP, target)
        if not artifact or "/" in artifact or "\\" in artifact or artifact in (".", ".."):
            raise InvalidArgument("artifact must be a plain file name such as "
                                  "training_results.csv")
        model = self._registered(principal, target.name)
        if artifact not in self.artifacts(model):
            raise NotFound(f"model {model.name} has no artifact {artifact}")
        return self._artifacts.iter_chunks(f"{model.adapter_uri.rstrip('/')}/{artifact}",
                                           ARTIFACT_CHUNK_BYTES)

