"""What the console answers when a call fails: the service's own message, in the page.

The status and message come from the OpenAI door's one mapping (services.openai_api.errors),
so the console says exactly what the API says: control's PERMISSION_DENIED text, an estimate's
INVALID_ARGUMENT, the generic message for anything internal. A key control no longer accepts
signs the browser out.
"""

from __future__ import annotations

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from services.common.errors import FinetuneError
from services.console import session
from services.console.rendering import base_path, is_htmx, render
from services.openai_api.errors import error_body, for_exception, validation_param


def wants_stream(request: Request) -> bool:
    """The playground's fetch of a stream: it reads errors as JSON."""
    return "text/event-stream" in request.headers.get("accept", "")


def sign_in_redirect(request: Request, refused: str = "") -> Response:
    """To the sign-in page (htmx follows HX-Redirect; a plain request a 303; a stream's
    fetch gets 401 and control's message). The page is told only that the key was refused,
    never a text from the URL, so a link cannot put words in the console's mouth."""
    target = f"{base_path(request)}/signin" + ("?expired=1" if refused else "")
    if wants_stream(request):
        return JSONResponse(error_body(f"sign in to the console again ({refused or 'no key'})",
                                       "authentication_error", "unauthenticated"),
                            status_code=401)
    if is_htmx(request):
        response: Response = Response(status_code=204, headers={"HX-Redirect": target})
    else:
        response = RedirectResponse(target, status_code=303)
    return response


def refusal(request: Request, status: int, message: str, code: str | None) -> Response:
    """A failed call as the caller sees it: JSON for the playground's streams, a fragment for
    htmx, a whole page otherwise."""
    if wants_stream(request):
        return JSONResponse(error_body(message, "console_error", code), status_code=status)
    context = {"message": message, "code": code or "", "status": status}
    if is_htmx(request):
        return render(request, "_error.html", context, status=status)
    return render(request, "error.html", context, status=status)


def install(app: FastAPI) -> None:
    async def on_error(request: Request, exc: Exception) -> Response:
        status, body = for_exception(exc)
        error = body["error"]
        if error["code"] == grpc.StatusCode.UNAUTHENTICATED.name.lower():
            response = sign_in_redirect(request, error["message"])
            session.forget_key(response, base_path(request) or "/")
            return response
        return refusal(request, status, error["message"], error["code"])

    async def on_sign_in(request: Request, exc: Exception) -> Response:
        return sign_in_redirect(request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = validation_param(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        return refusal(request, 400, f"{param}: {message}" if param else message,
                       "invalid_argument")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return refusal(request, exc.status_code, str(exc.detail), None)

    app.add_exception_handler(session.SignInRequired, on_sign_in)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(FinetuneError, on_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_error)
    app.add_exception_handler(Exception, on_error)
