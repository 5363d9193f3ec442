"""Models (lineage, evaluations, usage, downloads of what the caller owns) and usage charts."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from services.console import page_data
from services.console.rendering import page
from services.console.session import Key
from services.openai_api.context import Context

router = APIRouter()
MEDIA_TYPES = {".csv": "text/csv", ".json": "application/json", ".png": "image/png"}


@router.get("/models")
async def models(request: Request, key: Key, ctx: Context) -> Response:
    rows = await page_data.models(ctx.control, key)
    return await page(request, ctx.control, key, "models.html", {"rows": rows})


def download_name(model: str, artifact: str) -> str:
    """A file name safe in a Content-Disposition header."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{model}-{artifact}")


@router.get("/models/{name}/artifacts/{artifact}")
async def download(name: str, artifact: str, key: Key, ctx: Context) -> Response:
    first, rest = await page_data.first_and_rest(ctx.control.artifact_chunks(key, name,
                                                                             artifact))

    async def body():
        yield first
        async for chunk in rest:
            yield chunk
    suffix = artifact[artifact.rfind("."):] if "." in artifact else ""
    return StreamingResponse(
        body(), media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
        headers={"content-disposition":
                 f'attachment; filename="{download_name(name, artifact)}"'})


@router.get("/usage")
async def usage(request: Request, key: Key, ctx: Context) -> Response:
    data = await page_data.usage(ctx.control, key)
    return await page(request, ctx.control, key, "usage.html", data)
