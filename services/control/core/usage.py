"""Usage history: fine-tuning usage written once per finished job, inference usage recorded
per request as inference reports it (ModelResolutionService.ReportUsage), and the views
UsageService serves. Administrators see their account's usage; other users their own. A COMPLETE
of a model another account shares is billed to the caller's account; its row also names the
model's owner account, which sees such usage aggregated (`shared_models`), never by user."""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from sqlalchemy.exc import IntegrityError

from services.common.errors import InvalidArgument, NotFound
from services.control.core import paging
from services.control.core.authorization import Authorizer
from services.control.core.clock import Clock, utc_now
from services.control.domain.jobs import Job, JobStatus
from services.control.domain.names import account_model_name, shared_model_name
from services.control.domain.prices import PriceTable, parse_prices
from services.control.domain.principals import Principal
from services.control.domain.privileges import (
    Privilege,
    SecurableObject,
    model_owner_account,
    user_name,
)
from services.control.domain.usage import (
    FineTuningUsage,
    Grouping,
    InferenceUsage,
    UsageFilter,
    UsageGroup,
)
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

DEFAULT_PRICES = Path(__file__).resolve().parents[3] / "deploy" / "prices.toml"


def load_price_table(path: str | os.PathLike | None) -> PriceTable:
    """The configured price table; without one, deploy/prices.toml if present, else no
    prices (every credit 0)."""
    if path is None:
        if not DEFAULT_PRICES.exists():
            log.warning("no price table (%s): usage is recorded with 0 credits", DEFAULT_PRICES)
            return PriceTable()
        path = DEFAULT_PRICES
    with open(path, "rb") as f:
        try:
            return parse_prices(tomllib.load(f))
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise ValueError(f"invalid price table {path}: {exc}") from None


def record_fine_tuning_usage(tx: Tx, job: Job, prices: PriceTable) -> bool:
    """Write the usage row of a job that has just become terminal, in the transaction that made
    it terminal (so exactly once). Jobs that trained nothing and did not succeed are skipped."""
    if not job.terminal or tx.usage.fine_tuning_recorded(job.id):
        return False
    if job.status is not JobStatus.SUCCESS and job.trained_tokens <= 0:
        return False
    assert job.finished_on is not None   # set by every terminal transition
    tx.usage.add_fine_tuning(
        account_id=job.account_id, job_id=job.id, user_id=job.user_id, model=job.model_name,
        base_model=job.base_model, status=job.status.value, trained_tokens=job.trained_tokens,
        credits=prices.training_credits(job.base_model, job.trained_tokens),
        start_time=job.started_on, end_time=job.finished_on)
    return True


@dataclass(frozen=True)
class InferenceUsageReport:
    """One COMPLETE's tokens as inference reports them (idempotent on request_id)."""

    request_id: str
    account_id: str
    user_id: str
    model: str
    base_model: str
    prompt_tokens: int
    completion_tokens: int


class InferenceUsageRecorder:
    """Records inference's usage reports, priced with the price table, each request once."""

    def __init__(self, store: Store, clock: Clock = utc_now, prices: PriceTable = PriceTable()):
        self._store = store
        self._clock = clock
        self._prices = prices

    def record(self, usage: InferenceUsageReport) -> bool:
        """Record one request's tokens; False if that request id was already recorded."""
        if not usage.request_id.strip():
            raise InvalidArgument("request_id is required")
        if usage.prompt_tokens < 0 or usage.completion_tokens < 0:
            raise InvalidArgument("token counts must not be negative")

        def work(tx) -> bool:
            if not tx.accounts.exists(usage.account_id):
                raise NotFound(f"account {usage.account_id} does not exist")
            if tx.usage.exists(usage.account_id, usage.request_id):
                return False
            tx.usage.add(request_id=usage.request_id, account_id=usage.account_id,
                         user_id=usage.user_id, model=usage.model, base_model=usage.base_model,
                         prompt_tokens=usage.prompt_tokens,
                         completion_tokens=usage.completion_tokens, created_on=self._clock(),
                         credits=self._prices.inference_credits(
                             usage.base_model, usage.prompt_tokens + usage.completion_tokens),
                         model_account_id=model_owner_account(usage.model, usage.account_id))
            return True

        try:
            return self._store.run(work)
        except IntegrityError:  # the same request reported concurrently: counted once
            return False


@dataclass(frozen=True)
class UsagePage:
    records: list
    next_page_token: str


class UsageHistory:
    def __init__(self, store: Store, authorizer: Authorizer):
        self._store = store
        self._authorizer = authorizer

    def _filter(self, principal: Principal, start: datetime | None, end: datetime | None,
                model: str, user: str) -> UsageFilter:
        """Administrators see the account's usage and may filter by user; others see only
        their own (asking for another user's is PERMISSION_DENIED, whether or not it exists)."""
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time must be after start_time")
        access = self._authorizer.access(principal)
        user_id: str | None = None
        if not access.admin:
            user_id = principal.user_id
            if user.strip() and user_name(user) != principal.user_name:
                access.require(Privilege.MANAGE_ACCESS, SecurableObject.account())
        elif user.strip():
            found = self._store.run(lambda tx: tx.accounts.user(principal.account_id,
                                                                user_name(user)))
            if found is None:
                raise NotFound(f"user {user_name(user)} does not exist")
            user_id = found.id
        return UsageFilter(start, end, canonical_model(model), user_id)

    def fine_tuning(self, principal: Principal, start: datetime | None = None,
                    end: datetime | None = None, model: str = "", user: str = "",
                    page_size: int = 0, page_token: str = "") -> UsagePage:
        f = self._filter(principal, start, end, model, user)
        size = paging.page_size(page_size)
        after = _position(page_token)
        rows = self._store.run(lambda tx: tx.usage.fine_tuning_page(
            principal.account_id, f, size + 1, after))
        return _page(rows, size)

    def inference(self, principal: Principal, start: datetime | None = None,
                  end: datetime | None = None, model: str = "", user: str = "",
                  page_size: int = 0, page_token: str = "") -> UsagePage:
        f = self._filter(principal, start, end, model, user)
        size = paging.page_size(page_size)
        after = _position(page_token)
        rows = self._store.run(lambda tx: tx.usage.inference_page(
            principal.account_id, f, size + 1, after))
        return _page(rows, size)

    def aggregate_inference(self, principal: Principal, group_by: Sequence[Grouping],
                            start: datetime | None = None, end: datetime | None = None,
                            model: str = "", user: str = "",
                            shared_models: bool = False) -> list[UsageGroup]:
        if len(set(group_by)) != len(group_by):
            raise InvalidArgument("group_by names a grouping twice")
        if shared_models:
            f = self._shared_filter(principal, start, end, model, user, group_by)
        else:
            f = self._filter(principal, start, end, model, user)
        return self._store.run(lambda tx: tx.usage.inference_groups(
            principal.account_id, f, list(group_by), shared=shared_models))

    def _shared_filter(self, principal: Principal, start: datetime | None,
                       end: datetime | None, model: str, user: str,
                       group_by: Sequence[Grouping]) -> UsageFilter:
        """Other accounts' usage of the caller's models: ACCOUNTADMIN sees every model's, the
        owner of a model (OWNERSHIP) that model's; never by user (theirs, not the owner's)."""
        if user.strip() or Grouping.USER in group_by:
            raise InvalidArgument("the usage of shared models is not shown by user: the users "
                                  "are the other accounts'")
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time must be after start_time")
        access = self._authorizer.access(principal)
        if not model.strip():
            access.require(Privilege.MANAGE_ACCESS, SecurableObject.account())
            return UsageFilter(start, end)
        target = SecurableObject.model(model)
        access.require(Privilege.OWNERSHIP, target)   # never held on another account's model
        return UsageFilter(start, end, target.name)


def canonical_model(model: str) -> str:
    """A fine-tuned model's canonical name (one shared by another account keeps that account as
    its first part); base model names (not identifiers) as given."""
    model = model.strip()
    if not model:
        return ""
    try:
        account_id, name = account_model_name(model, "model")
    except InvalidArgument:
        return model
    return shared_model_name(account_id, str(name)) if account_id else str(name)


def _position(token: str) -> tuple[datetime, int] | None:
    if not token:
        return None
    try:
        time, row_id = paging.decode_token(token)
        return datetime.fromisoformat(time), int(row_id)
    except (ValueError, TypeError):
        raise InvalidArgument("invalid page_token") from None


def _page(rows: Sequence[tuple[FineTuningUsage | InferenceUsage, tuple[datetime, int]]],
          size: int) -> UsagePage:
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        time, row_id = rows[-1][1]
        token = paging.encode_token([time.isoformat(), row_id])
    return UsagePage([record for record, _ in rows], token)
