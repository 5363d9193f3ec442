"""COMPLETE, transport-neutral: validate, admit, resolve, render, generate, count.

The gRPC servicer only converts protos to these types and back; everything the service decides
happens here, against the CompletionEngine / ModelResolver / AdapterRegistry seams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import AsyncGenerator, Protocol

from services.common.chat_format import prompt_token_ids
from services.common.choices import MAX_CHOICE_CHARS, MAX_CHOICES, choice_length_ok
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.inference.accounting import Answer, Usage, UsageCounter, UsageLedger, UsageRecord
from services.inference.adapters import AdapterRegistry, ModelResolver, ResolvedModel
from services.inference.engine import CompletionEngine, Sampling

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
MAX_MODEL_NAME_CHARS = 512
MAX_JSON_SCHEMA_CHARS = 64 * 1024
# vLLM's own finish reasons that are a normal end of generation, as the API names them.
FINISH_REASONS = {"stop": "stop", "length": "length", "repetition": "stop"}


@dataclass(frozen=True)
class CompletionInput:
    model: str
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()   # (role, content)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = ""
    json_schema: str | None = None  # response_format: the output must be JSON valid against it
    choices: tuple[str, ...] = ()   # response_format: the output is exactly one of these
    # "account_id/user_id" a service-token caller (control's evaluations) acts for; control
    # accepts it only with the service token and then resolves the model as that user.
    on_behalf_of: str = ""


@dataclass(frozen=True)
class Chunk:
    """One piece of a completion; the last one carries finish_reason and usage."""

    delta: str
    finish_reason: str | None = None
    usage: Usage | None = None
    # On a forwarded stream's first chunk (the router): the usage row's id the engine chose.
    request_id: str | None = None


@dataclass(frozen=True)
class Completion:
    request_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage


class CompletionsCore(Protocol):
    """COMPLETE as its doors (the gRPC servicer, the OpenAI-compatible API) call it: this
    module's `Completions` in an engine, the router's forwarding core in front of several."""

    async def complete(self, api_key: str, inp: CompletionInput) -> Completion: ...

    def stream(self, api_key: str, inp: CompletionInput,
               usage_id: str | None = None) -> AsyncGenerator[Chunk, None]: ...


@dataclass(frozen=True)
class Limits:
    default_max_tokens: int
    max_in_flight: int


def check_input(inp: CompletionInput) -> None:
    """Input checks that need neither the model nor the tokenizer."""
    if not inp.model.strip():
        raise InvalidArgument("model is required")
    if len(inp.model) > MAX_MODEL_NAME_CHARS:
        raise InvalidArgument("model name is too long")
    if inp.prompt and inp.messages:
        raise InvalidArgument("give either prompt or messages, not both")
    if inp.messages:
        for role, _ in inp.messages:
            if role not in ROLES:
                raise InvalidArgument(f"message role must be one of {', '.join(ROLES)}, "
                                      f"not {role!r}")
        if not any(content.strip() for _, content in inp.messages):
            raise InvalidArgument("messages are empty")
    elif not inp.prompt.strip():
        raise InvalidArgument("prompt is empty")
    if inp.temperature is not None and not (
            math.isfinite(inp.temperature) and 0 <= inp.temperature <= MAX_TEMPERATURE):
        raise InvalidArgument(f"temperature must be between 0 and {MAX_TEMPERATURE:g}")
    if inp.top_p is not None and not (math.isfinite(inp.top_p) and 0 < inp.top_p <= 1):
        raise InvalidArgument("top_p must be in (0, 1]")
    if inp.max_tokens is not None and inp.max_tokens < 1:
        raise InvalidArgument("max_tokens must be at least 1")
    if len(inp.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(not s or len(s) > MAX_STOP_CHARS for s in inp.stop):
        raise InvalidArgument(f"stop sequences must have 1 to {MAX_STOP_CHARS} characters")
    if len(inp.request_id) > MAX_REQUEST_ID_CHARS or not inp.request_id.isprintable():
        raise InvalidArgument(f"request_id must be printable, at most {MAX_REQUEST_ID_CHARS} "
                              "characters")
    if inp.choices:
        check_choices(inp.choices)
        if inp.json_schema is not None:
            raise InvalidArgument("give response_format.json_schema or response_format.choices, "
                                  "not both")
    elif inp.json_schema is not None:
        check_json_schema(inp.json_schema)


def check_choices(choices: tuple[str, ...]) -> None:
    if len(choices) > MAX_CHOICES:
        raise InvalidArgument(f"response_format.choices: at most {MAX_CHOICES} choices")
    if not all(map(choice_length_ok, choices)):
        raise InvalidArgument(f"response_format.choices must have 1 to {MAX_CHOICE_CHARS} "
                              "characters each")


def check_json_schema(text: str) -> None:
    """A response_format schema must be a JSON object that is a valid JSON Schema.

    Checked here so a malformed schema is INVALID_ARGUMENT before any work; a valid schema the
    grammar backends cannot compile is refused by vLLM when the request is added (also
    INVALID_ARGUMENT, see engine.py).
    """
    from jsonschema import SchemaError, validators

    if not text.strip():
        raise InvalidArgument("a response_format needs json_schema or choices")
    if len(text) > MAX_JSON_SCHEMA_CHARS:
        raise InvalidArgument(f"response_format.json_schema is longer than "
                              f"{MAX_JSON_SCHEMA_CHARS} characters")
    try:
        schema = json.loads(text)
        if not isinstance(schema, dict):
            raise InvalidArgument("response_format.json_schema must be a JSON object")
        validators.validator_for(schema).check_schema(schema)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"response_format.json_schema is not valid JSON: {exc}") \
            from None
    except SchemaError as exc:
        raise InvalidArgument(
            f"response_format.json_schema is not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise InvalidArgument("response_format.json_schema is nested too deeply") from None


def plan_sampling(inp: CompletionInput, prompt_tokens: int, context_window: int,
                  default_max_tokens: int) -> Sampling:
    """Sampling settings once the prompt's length is known; the prompt must leave room."""
    room = context_window - prompt_tokens
    if room < 1:
        raise InvalidArgument(
            f"the prompt is {prompt_tokens} tokens; the context window of {inp.model} is "
            f"{context_window} tokens, including the completion")
    if inp.max_tokens is not None:
        if inp.max_tokens > room:
            raise InvalidArgument(
                f"max_tokens {inp.max_tokens} plus the prompt's {prompt_tokens} tokens exceed "
                f"the context window of {context_window} tokens")
        max_tokens = inp.max_tokens
    else:
        max_tokens = min(default_max_tokens, room)
    return Sampling(
        max_tokens=max_tokens,
        temperature=0.0 if inp.temperature is None else inp.temperature,  # greedy by default
        top_p=1.0 if inp.top_p is None else inp.top_p,
        stop=inp.stop,
        seed=inp.seed,
        json_schema=inp.json_schema,
        choices=tuple(dict.fromkeys(inp.choices)),
    )


def request_fingerprint(inp: CompletionInput) -> str:
    """What makes two requests the same request, whatever ids they carry."""
    body = asdict(replace(inp, request_id="", on_behalf_of=""))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def new_request_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


class Completions:
    def __init__(self, engine: CompletionEngine, resolver: ModelResolver,
                 registry: AdapterRegistry, usage: UsageLedger, limits: Limits):
        self._engine = engine
        self._resolver = resolver
        self._registry = registry
        self._usage = usage
        self._limits = limits
        self._in_flight = 0
        # (account, caller's request_id) of named requests being generated now.
        self._answering: dict[tuple[str, str], asyncio.Event] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def check_caller(self, api_key: str, base_model: str) -> None:
        """The caller's key must be able to use the engine's base model (control decides)."""
        await self._resolver.resolve(api_key, base_model, "")

    async def complete(self, api_key: str, inp: CompletionInput) -> Completion:
        parts: list[str] = []
        last = Chunk("")
        usage_id = new_request_id()
        # Without a caller's id the answer carries the usage record's id, which ties the
        # response to exactly one usage row at control.
        request_id = inp.request_id or usage_id
        async with aclosing(self.stream(api_key, inp, usage_id)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.delta)
                last = chunk
        assert last.finish_reason is not None and last.usage is not None
        return Completion(request_id=request_id, model=inp.model, text="".join(parts),
                          finish_reason=last.finish_reason, usage=last.usage)

    async def stream(self, api_key: str, inp: CompletionInput,
                     usage_id: str | None = None) -> AsyncGenerator[Chunk, None]:
        check_input(inp)
        if self._in_flight >= self._limits.max_in_flight:
            raise ResourceExhausted(
                f"too many requests in flight ({self._limits.max_in_flight}); retry later")
        self._in_flight += 1
        try:
            # aclosing: a caller that stops early must reach _generate's abort now, not at GC.
            async with aclosing(self._generate(api_key, inp, usage_id or new_request_id())) \
                    as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._in_flight -= 1

    async def _generate(self, api_key: str, inp: CompletionInput,
                        engine_request_id: str) -> AsyncGenerator[Chunk, None]:
        # Our own id for the engine and the usage record: unique per generation even when a
        # caller reuses its request_id, so a retry is neither merged nor aborted with another.
        resolved = await self._resolver.resolve(api_key, inp.model, inp.on_behalf_of)
        if not inp.request_id or inp.on_behalf_of:
            async with aclosing(self._new_answer(resolved, inp, engine_request_id)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        # The caller named its request: the same request again is the same answer, billed
        # once (an idempotency key). A duplicate arriving while the first still runs waits
        # for it, so the two never both generate.
        key = (resolved.account_id, inp.request_id)
        fingerprint = request_fingerprint(inp)
        while (running := self._answering.get(key)) is not None:
            await running.wait()
        done = self._answering[key] = asyncio.Event()
        try:
            kept = await self._usage.answered(*key)
            if kept is None:
                async with aclosing(self._new_answer(resolved, inp, engine_request_id,
                                                     fingerprint)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            elif kept.answer.fingerprint != fingerprint:
                raise InvalidArgument(
                    f"request_id {inp.request_id!r} was already used for a different request "
                    "in the last 24 hours; give each request its own id")
            else:
                yield Chunk(kept.answer.text, kept.answer.finish_reason, kept.usage,
                            request_id=kept.usage_id)
        finally:
            del self._answering[key]
            done.set()

    async def _new_answer(self, resolved: ResolvedModel, inp: CompletionInput,
                          engine_request_id: str,
                          fingerprint: str | None = None) -> AsyncGenerator[Chunk, None]:
        """Generate, count and record; with a fingerprint the answer is kept with its row."""
        lora = await self._registry.adapter_for(resolved)
        ids = await asyncio.to_thread(_render, self._engine.tokenizer, inp)
        context = self._engine.max_model_len
        if resolved.context_window > 0:
            context = min(context, resolved.context_window)
        sampling = plan_sampling(inp, len(ids), context, self._limits.default_max_tokens)

        # Control acting for a user (delegation, which ResolveModel has just verified) names
        # its rows itself (an evaluation's row): a retry of the same row after a lost answer,
        # or after a restart of either side, is then one usage record, not two. A user's own
        # request_id is kept with its answer instead (above), never as the row's id.
        usage_id = inp.request_id if inp.on_behalf_of and inp.request_id else engine_request_id
        counter = UsageCounter(len(ids))
        text: list[str] = []
        finish_reason = None
        caller_left = False
        deltas = self._engine.generate(engine_request_id, ids, sampling, lora)
        try:
            async for delta in deltas:
                counter.add(delta.prompt_token_count, delta.token_ids)
                if delta.finish_reason is None:
                    if delta.text:
                        text.append(delta.text)
                        yield Chunk(delta.text)
                    continue
                finish_reason = delta.finish_reason
                if finish_reason not in FINISH_REASONS:
                    log.warning("request %s ended with %s", engine_request_id,
                                finish_reason)
                    raise Unavailable("generation was interrupted, retry")
                usage = counter.usage
                answer = None
                if fingerprint is not None:
                    answer = Answer(inp.request_id, fingerprint, "".join(text) + delta.text,
                                    FINISH_REASONS[finish_reason])
                # Durably recorded before the caller sees the end: no answer leaves without
                # its usage row, and a client that hangs up on the last message is still
                # billed for what it received.
                await self._record(UsageRecord(
                    request_id=usage_id, account_id=resolved.account_id,
                    user_id=resolved.user_id, model=resolved.model,
                    base_model=resolved.base_model, usage=usage, answer=answer))
                yield Chunk(delta.text, FINISH_REASONS[finish_reason], usage)
                return
        except (GeneratorExit, asyncio.CancelledError):
            caller_left = True
            raise
        finally:
            await deltas.aclose()
            if finish_reason is None:
                # The caller went away, the deadline passed, or the engine failed: free the
                # engine's slot now rather than when the generator is collected.
                await self._engine.abort(engine_request_id)
                if caller_left and counter.completion_tokens:
                    # What the engine did for a caller who left is billed, as it would have
                    # been had they stayed: the prompt and the tokens generated up to the
                    # abort, counted from the engine's deltas (those the caller never read
                    # included). A request gone before its first token costs nothing, and
                    # one the engine failed is retried, not billed.
                    await self._record(UsageRecord(
                        request_id=usage_id, account_id=resolved.account_id,
                        user_id=resolved.user_id, model=resolved.model,
                        base_model=resolved.base_model, usage=counter.usage))
        raise Unavailable("generation ended without a result, retry")

    async def _record(self, record: UsageRecord) -> None:
        try:
            await self._usage.record(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not record usage %s", record)
            raise Unavailable("usage could not be recorded; the answer is withheld, retry") \
                from None


def _render(tokenizer, inp: CompletionInput) -> list[int]:
    from jinja2 import TemplateError

    try:
        if inp.messages:
            return prompt_token_ids(tokenizer, messages=[{"role": r, "content": c}
                                                         for r, c in inp.messages])
        return prompt_token_ids(tokenizer, prompt=inp.prompt)
    except TemplateError as exc:  # the template refused the conversation (e.g. role order)
        raise InvalidArgument(f"the messages do not fit the model's chat template: {exc}") \
            from None
