"""What every route depends on: the caller's key and the service's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Mapping

from fastapi import Depends, Header, Request

from services.common.errors import Unauthenticated, Unavailable
from services.common.interceptors import bearer_token
from services.inference.completions import CompletionsCore
from services.openai_api.control import ControlApi


@dataclass
class ApiContext:
    """The COMPLETE core (attached once the engine is ready), control's API, and each base
    model's default learning rate (the unit of learning_rate_multiplier)."""

    control: ControlApi
    default_learning_rates: Mapping[str, float] = field(default_factory=dict)
    completions: CompletionsCore | None = None

    def core(self) -> CompletionsCore:
        if self.completions is None:
            raise Unavailable("the inference engine is starting")
        return self.completions


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


def api_key(authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's key (`Authorization: Bearer <key>`); control judges it."""
    key = bearer_token([("authorization", authorization)] if authorization else [])
    if key is None:
        raise Unauthenticated("an API key is required (Authorization: Bearer <key>)")
    return key


# The routes' parameters: `key: ApiKey, ctx: Context`.
ApiKey = Annotated[str, Depends(api_key)]
Context = Annotated[ApiContext, Depends(context)]
