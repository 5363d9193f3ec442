"""GET /v1/models: the base models and the fine-tuned models the caller may use (control
filters them by the caller's USAGE privileges), those other accounts share with it included,
`owned_by` their account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from finetune.control.v1 import models_pb2
from services.openai_api.context import ApiKey, Context

router = APIRouter()
OWNER = "finetune"


def base_model_object(base: models_pb2.BaseModel) -> dict[str, Any]:
    return {"id": base.name, "object": "model", "created": 0, "owned_by": OWNER,
            "root": base.name, "parent": None, "max_model_len": base.context_window}


def model_object(model: models_pb2.Model) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": model.created_on.seconds,
            "owned_by": model.owner_account if model.shared else OWNER,
            "root": model.base_model, "parent": model.base_model}


@router.get("/v1/models")
async def list_models(key: ApiKey,
                      ctx: Context) -> dict[str, Any]:
    bases = await ctx.control.base_models(key)
    models = await ctx.control.models(key) + await ctx.control.shared_models(key)
    return {"object": "list",
            "data": [base_model_object(b) for b in bases] + [model_object(m) for m in models]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, key: ApiKey,
                    ctx: Context) -> dict[str, Any]:
    for base in await ctx.control.base_models(key):
        if base.name == model_id:
            return base_model_object(base)
    return model_object(await ctx.control.get_model(key, model_id))
