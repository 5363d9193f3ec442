"""COMPLETE inside a query: the query runs in a worker thread (DuckDB), the inference client on
control's event loop. A chunk of rows is sent from the thread to the loop as one batch of calls
made on behalf of the query's caller, at most `concurrency` at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Sequence

from services.common.errors import DeadlineExceeded, FinetuneError
from services.control.data.sql_functions import Generation, GenerationCall, SqlFunctions
from services.control.dispatch.inference import CompletionCall, CompletionClient

log = logging.getLogger(__name__)


class LoopGenerator:
    """A RowGenerator (services.control.data.sql_functions) over a CompletionClient."""

    def __init__(self, client: CompletionClient, loop: asyncio.AbstractEventLoop,
                 account_id: str, user_id: str, concurrency: int, timeout_s: float):
        self._client = client
        self._loop = loop
        self._account_id = account_id
        self._user_id = user_id
        self._concurrency = concurrency
        self._timeout_s = timeout_s

    def generate(self, calls: Sequence[GenerationCall]) -> list[Generation | FinetuneError]:
        future = asyncio.run_coroutine_threadsafe(self._all(calls), self._loop)
        try:
            return future.result(timeout=self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("COMPLETE inside the query ran past the query's time "
                                   "limit") from None

    async def _all(self, calls: Sequence[GenerationCall]) -> list[Generation | FinetuneError]:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(call: GenerationCall) -> Generation | FinetuneError:
            options = call.options
            async with gate:
                try:
                    answer = await self._client.complete(CompletionCall(
                        model=call.model, prompt=call.prompt, account_id=self._account_id,
                        user_id=self._user_id, max_tokens=options.max_tokens,
                        temperature=options.temperature, top_p=options.top_p,
                        stop=options.stop, seed=options.seed,
                        json_schema=options.json_schema))
                except FinetuneError as exc:
                    return exc
                except Exception:   # noqa: BLE001 - one row's unexpected failure, not the query's
                    log.exception("COMPLETE inside a query failed")
                    return FinetuneError("COMPLETE failed")   # INTERNAL, generic
            return Generation(answer.text, answer.prompt_tokens, answer.completion_tokens)
        return list(await asyncio.gather(*(one(c) for c in calls)))


class SqlCompletions:
    """Makes the COMPLETE functions of one query, for its caller, over control's inference
    client (services.control.data.sql_functions has the functions' rules)."""

    def __init__(self, client: CompletionClient, max_rows: int, concurrency: int,
                 timeout_s: float):
        self._client = client
        self._max_rows = max_rows
        self._concurrency = concurrency
        self._timeout_s = timeout_s

    def functions_for(self, account_id: str, user_id: str,
                      loop: asyncio.AbstractEventLoop) -> SqlFunctions:
        return SqlFunctions(LoopGenerator(self._client, loop, account_id, user_id,
                                          self._concurrency, self._timeout_s), self._max_rows)
