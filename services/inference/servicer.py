"""The InferenceService servicer: protos in, `Completions` call, protos out. Nothing else."""

from __future__ import annotations

from contextlib import aclosing
from typing import Protocol

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.errors import NotFound, Unavailable
from services.common.interceptors import current_principal
from services.inference.accounting import Usage
from services.inference.completions import CompletionInput, CompletionsCore, new_request_id
from services.inference.engine import EngineInfo

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
ON_BEHALF_OF_HEADER = "x-finetune-on-behalf-of"


class CompletionService(CompletionsCore, Protocol):
    """What the servicer calls: the COMPLETE core (the engine's own or the router's, which
    forwards to the engine of the model's base model) and its caller check for GetEngine."""

    async def check_caller(self, api_key: str, base_model: str) -> None: ...


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, completions: CompletionService | None = None,
                 info: EngineInfo | None = None):
        self._completions = completions
        self._info = info

    def attach(self, completions: CompletionService, info: EngineInfo | None = None) -> None:
        """Start answering: called once the engine is ready."""
        self._completions, self._info = completions, info

    def _ready(self) -> CompletionService:
        if self._completions is None:
            raise Unavailable("the inference engine is starting")
        return self._completions

    async def Complete(self, request, context):
        completions = self._ready()
        result = await completions.complete(current_principal(),
                                            to_input(request, on_behalf_of(context)))
        return inference_pb2.CompleteResponse(
            text=result.text, finish_reason=result.finish_reason, usage=to_proto(result.usage),
            model=result.model, request_id=result.request_id)

    async def CompleteStream(self, request, context):
        completions = self._ready()
        usage_id = new_request_id()
        stream = completions.stream(current_principal(),
                                    to_input(request, on_behalf_of(context)), usage_id)
        first = True
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                yield inference_pb2.CompleteStreamResponse(
                    delta=chunk.delta, finish_reason=chunk.finish_reason or "",
                    usage=to_proto(chunk.usage) if chunk.usage else None,
                    request_id=(chunk.request_id or usage_id) if first else "")
                first = False


    async def GetEngine(self, request, context):
        completions = self._ready()
        if self._info is None:
            raise Unavailable("the inference engine is starting")
        await completions.check_caller(current_principal(), self._info.base_model)
        if request.base_model and request.base_model != self._info.base_model:
            raise NotFound(f"this engine serves {self._info.base_model}, "
                           f"not {request.base_model}")
        return to_engine_proto(self._info)


def to_engine_proto(info: EngineInfo) -> inference_pb2.Engine:
    return inference_pb2.Engine(
        base_model=info.base_model, dtype=info.dtype, precision_source=info.precision.source,
        probe=[inference_pb2.PrecisionTiming(dtype=t.dtype, seconds=t.seconds, error=t.error)
               for t in info.precision.timings],
        max_model_len=info.max_model_len, max_loras=info.max_loras)


def on_behalf_of(context) -> str:
    """The delegation header (control's evaluations), passed to control unchecked: control
    decides whether the caller's key may use it."""
    metadata = context.invocation_metadata() if context is not None else ()
    for key, value in metadata or ():
        if key.lower() == ON_BEHALF_OF_HEADER:
            return value.strip()
    return ""


def to_input(request: inference_pb2.CompleteRequest, on_behalf_of: str = "") -> CompletionInput:
    opts = request.options
    return CompletionInput(
        model=request.model,
        prompt=request.prompt,
        messages=tuple((m.role, m.content) for m in request.messages),
        temperature=opts.temperature if opts.HasField("temperature") else None,
        top_p=opts.top_p if opts.HasField("top_p") else None,
        max_tokens=opts.max_tokens if opts.HasField("max_tokens") else None,
        stop=tuple(opts.stop),
        seed=opts.seed if opts.HasField("seed") else None,
        request_id=request.request_id,
        json_schema=_json_schema(opts),
        choices=tuple(opts.response_format.choices),
        on_behalf_of=on_behalf_of,
    )


def _json_schema(opts: inference_pb2.CompletionOptions) -> str | None:
    """The schema of a response_format, None for free text or choices; set but empty (neither
    a schema nor choices) is a malformed request, not free text."""
    if not opts.HasField("response_format"):
        return None
    rf = opts.response_format
    return rf.json_schema if rf.json_schema or not rf.choices else None


def to_proto(usage: Usage) -> inference_pb2.Usage:
    return inference_pb2.Usage(prompt_tokens=usage.prompt_tokens,
                               completion_tokens=usage.completion_tokens,
                               total_tokens=usage.total_tokens)


def to_request(inp: CompletionInput) -> inference_pb2.CompleteRequest:
    """The inverse of `to_input` (the router forwards what it was sent)."""
    options = inference_pb2.CompletionOptions(stop=list(inp.stop))
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        if (value := getattr(inp, name)) is not None:
            setattr(options, name, value)
    if inp.json_schema is not None:
        options.response_format.json_schema = inp.json_schema
    if inp.choices:
        options.response_format.choices.extend(inp.choices)
    return inference_pb2.CompleteRequest(
        model=inp.model, prompt=inp.prompt, options=options, request_id=inp.request_id,
        messages=[inference_pb2.ChatMessage(role=r, content=c) for r, c in inp.messages])


def from_proto(usage: inference_pb2.Usage) -> Usage:
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
