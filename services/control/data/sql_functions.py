"""COMPLETE and TRY_COMPLETE inside sandboxed queries, with Cortex's shapes.

    COMPLETE(model, prompt)            -> the completion's text
    COMPLETE(model, prompt, options)   -> a JSON document: choices, created, model, usage
    TRY_COMPLETE(...)                  -> the same, or NULL where that row's call fails

`options` is a JSON object (text, or a struct literal such as {'temperature': 0.2}) with
temperature, top_p, max_tokens, stop, seed and response_format ({"type": "json", "schema":
{...}}). A NULL model or prompt gives NULL and calls nothing.

The functions are DuckDB Arrow UDFs: DuckDB hands them a column chunk at a time, and the
chunk's rows go to the generator together (it bounds their concurrency). Every call is made
with the caller's identity, so inference checks USAGE on the model and counts its usage as
for any COMPLETE. A query may generate at most `max_rows` rows: the chunk that would pass the
budget fails the query with RESOURCE_EXHAUSTED before any of its rows is generated. A failing
row fails the whole query with that row's status under COMPLETE (as Cortex's COMPLETE does);
TRY_COMPLETE gives NULL for it instead.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import duckdb
import pyarrow as pa
from duckdb.func import ARROW, SPECIAL

from services.common.errors import FinetuneError, InvalidArgument, ResourceExhausted
from services.control.data.sandbox import function_names, parsed

FUNCTION_NAMES = frozenset({"complete", "try_complete"})
OPTION_KEYS = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed",
                         "response_format"})


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 0             # 0: the service's default
    stop: tuple[str, ...] = ()
    seed: int = 0
    json_schema: str = ""           # response_format's schema, as JSON text


@dataclass(frozen=True)
class GenerationCall:
    model: str
    prompt: str
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


class RowGenerator(Protocol):
    """COMPLETE for a chunk of rows, as the query's caller; each row's answer or its error (a
    services.common.errors error), in order. Called from DuckDB's threads."""

    def generate(self, calls: Sequence[GenerationCall]) -> list[Generation | FinetuneError]: ...


def calls_functions(sql: str) -> bool:
    """Whether the query names COMPLETE or TRY_COMPLETE (False when it does not parse: the
    sandbox then refuses it with its own message)."""
    tree = parsed(sql)
    return tree is not None and bool(
        {name.lower() for name in function_names(tree)} & FUNCTION_NAMES)


@contextmanager
def functions_failures(functions: "SqlFunctions | None") -> Iterator[None]:
    """A query that failed because a function failed fails with that function's error (its
    status: PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...), not with DuckDB's text of it."""
    try:
        yield
    except FinetuneError:
        if functions is not None and functions.failure is not None:
            raise functions.failure from None
        raise


def parse_options(text: str | None) -> GenerationOptions:
    """COMPLETE's options argument; InvalidArgument names what is wrong."""
    if text is None:
        return GenerationOptions()
    try:
        value = json.loads(text)
        if isinstance(value, str):   # to_json() of a VARCHAR argument: JSON inside a string
            value = json.loads(value)
    except ValueError:
        raise InvalidArgument("COMPLETE options must be a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidArgument("COMPLETE options must be a JSON object")
    unknown = sorted(set(value) - OPTION_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown COMPLETE option {', '.join(unknown)} (known: "
                              f"{', '.join(sorted(OPTION_KEYS))})")
    try:
        stop = value.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
        schema = ""
        if value.get("response_format") is not None:
            response_format = value["response_format"]
            if (not isinstance(response_format, dict) or response_format.get("type") != "json"
                    or not isinstance(response_format.get("schema"), dict)):
                raise InvalidArgument(
                    'response_format must be {"type": "json", "schema": {...}}')
            schema = json.dumps(response_format["schema"])
        return GenerationOptions(
            temperature=float(value.get("temperature", 0.0) or 0.0),
            top_p=float(value.get("top_p", 1.0) if value.get("top_p") is not None else 1.0),
            max_tokens=int(value.get("max_tokens") or 0), stop=stop,
            seed=int(value.get("seed") or 0), json_schema=schema)
    except (TypeError, ValueError):
        raise InvalidArgument("COMPLETE options: temperature and top_p are numbers, "
                              "max_tokens and seed integers, stop text or a list") from None


def cortex_document(model: str, answer: Generation, created: int) -> str:
    """What COMPLETE with options returns, in Cortex's shape."""
    return json.dumps({
        "choices": [{"messages": answer.text}], "created": created, "model": model,
        "usage": {"completion_tokens": answer.completion_tokens,
                  "prompt_tokens": answer.prompt_tokens,
                  "total_tokens": answer.prompt_tokens + answer.completion_tokens}},
        ensure_ascii=False)


class SqlFunctions:
    """The functions of one query's connection, its generation budget, and the first error a
    strict call raised (DuckDB reports a UDF's exception as text: the query's caller re-raises
    this one instead, with its status)."""

    def __init__(self, generator: RowGenerator, max_rows: int):
        self._generator = generator
        self._max_rows = max_rows
        self._lock = threading.Lock()
        self.generated = 0
        self.failure: FinetuneError | None = None

    def register(self, connection: duckdb.DuckDBPyConnection) -> None:
        for strict in (True, False):
            prefix = "ft_complete" if strict else "ft_try_complete"
            for with_options in (False, True):
                connection.create_function(
                    f"{prefix}_{'json' if with_options else 'text'}",
                    self._udf(strict, with_options),
                    ["VARCHAR"] * (3 if with_options else 2), "VARCHAR", type=ARROW,
                    null_handling=SPECIAL, side_effects=True)
            name = "complete" if strict else "try_complete"
            # One name, two arities (a macro may be overloaded, a Python UDF not); options go
            # through to_json so that a struct literal is accepted as Cortex's object is.
            connection.execute(
                f"CREATE TEMP MACRO {name}(m, p) AS {prefix}_text(m, p), "
                f"(m, p, o) AS {prefix}_json(m, p, to_json(o)::VARCHAR)")

    def _udf(self, strict: bool, with_options: bool):
        def run(models, prompts, options=None) -> pa.Array:
            try:
                return pa.array(self._chunk(models.to_pylist(), prompts.to_pylist(),
                                            options.to_pylist() if options is not None
                                            else None, strict), type=pa.string())
            except FinetuneError as exc:
                with self._lock:
                    self.failure = self.failure or exc
                raise
        if with_options:
            return run
        return lambda models, prompts: run(models, prompts)

    def _chunk(self, models: list, prompts: list, options: list | None,
               strict: bool) -> list[str | None]:
        calls: list[GenerationCall | None] = []
        for i, (model, prompt) in enumerate(zip(models, prompts, strict=True)):
            if model is None or prompt is None:
                calls.append(None)
                continue
            try:
                parsed = parse_options(options[i]) if options is not None else None
            except InvalidArgument:
                if strict:
                    raise
                calls.append(None)
                continue
            calls.append(GenerationCall(str(model), str(prompt),
                                        parsed or GenerationOptions()))
        wanted = [c for c in calls if c is not None]
        with self._lock:
            if self.generated + len(wanted) > self._max_rows:
                raise ResourceExhausted(
                    f"the query would call COMPLETE on more than {self._max_rows} rows; add a "
                    "LIMIT or a WHERE clause")
            self.generated += len(wanted)
        answers = iter(self._generator.generate(wanted) if wanted else [])
        created = int(time.time())
        out: list[str | None] = []
        for call in calls:
            if call is None:
                out.append(None)
                continue
            answer = next(answers)
            if isinstance(answer, FinetuneError):
                if strict:
                    raise answer
                out.append(None)
            elif options is not None:
                out.append(cortex_document(call.model, answer, created))
            else:
                out.append(answer.text)
        return out
