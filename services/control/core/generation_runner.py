"""Runs batch generations in the background of the control process: claims PENDING ones,
sends the rows no earlier run answered to the inference service (`concurrency` in flight),
saves the answers as a new part file and then the progress, at most about once a second,
honours cancel, and at the end writes the target table.

A restarted control puts generations left RUNNING back to PENDING; the next run reads the
parts and generates only the rest, so no saved row is generated twice and none is lost. Each
row's COMPLETE carries the request id `<generation id>/<row>`, which inference uses as the
usage row's id on a delegated call: a row whose answer was lost in a crash (generated, not yet
saved) is generated again but billed once. Usage is recorded by inference, as for any COMPLETE,
so `finetune usage` lists these rows beside interactive ones.

A row's INVALID_ARGUMENT (its prompt is too long, say) goes into that row's error column; any
other error, once retries are spent, fails the generation with the row's number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from services.common.artifacts import ArtifactStore
from services.common.errors import AlreadyExists, FinetuneError, InvalidArgument
from services.control.core.authorization import load_access
from services.control.core.background_runner import BackgroundRunner, RunnerSettings, Stopped
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import require_model_call
from services.control.core.generations import require_target_table
from services.control.core.notifier import ChangeNotifier
from services.control.data.catalog import DataCatalog
from services.control.data.generation_data import (
    generation_uri,
    prompts,
    read_answers,
    read_input,
    result_file,
    write_part,
)
from services.control.data.uploads import FileFormat, SpooledUpload
from services.control.dispatch.inference import CompletionCall, CompletionClient
from services.control.domain.evaluations import EvaluationStatus
from services.control.domain.generations import OUTPUT_COLUMNS, RowAnswer, TextGeneration
from services.control.domain.names import qualified_name
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    done: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, answer: RowAnswer) -> None:
        self.done += 1
        self.failed += answer.error is not None
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens


class GenerationRunner(BackgroundRunner):
    what = "generation"

    def __init__(self, store: Store, artifacts: ArtifactStore, catalog: DataCatalog,
                 client: CompletionClient | None, events: ChangeNotifier,
                 settings: RunnerSettings = RunnerSettings(), clock: Clock = utc_now,
                 monotonic: Callable[[], float] = time.monotonic):
        super().__init__(store, client, events, settings, clock, monotonic)
        self._artifacts = artifacts
        self._catalog = catalog

    def _items(self, tx: Tx):
        return tx.generations

    async def _execute(self, generation: TextGeneration,
                       stop: asyncio.Event) -> TextGeneration:
        await asyncio.to_thread(self._check_access, generation)
        assert generation.data_uri is not None   # set when the generation was created
        table = await asyncio.to_thread(read_input, self._artifacts, generation.data_uri)
        answers = await asyncio.to_thread(read_answers, self._artifacts, generation.id)
        tally = await self._generate(generation, prompts(table), answers, stop)
        return await asyncio.to_thread(self._finish, generation, table, answers, tally)

    def _check_access(self, generation: TextGeneration) -> None:
        """Privileges as of now: the user may have lost them since GenerateText."""
        def work(tx: Tx) -> None:
            access = load_access(tx, generation.account_id, generation.user_id)
            require_model_call(access, generation.model, bool(generation.adapter_id))
            require_target_table(access, generation.into)
        self._store.run(work)

    async def _generate(self, generation: TextGeneration, texts: list[str | None],
                        saved: dict[int, RowAnswer], stop: asyncio.Event) -> _Tally:
        """Answer the rows `saved` lacks, adding each to it once its part is written; the
        counts of all of them."""
        tally = _Tally()
        for answer in saved.values():
            tally.add(answer)
        unsaved: list[RowAnswer] = []
        seq = 0
        flushing = asyncio.Lock()
        last_flush = self._monotonic()

        async def flush(force: bool = False) -> None:
            nonlocal last_flush, seq
            if not force and (flushing.locked() or self._monotonic() - last_flush
                              < self._settings.flush_interval_s):
                return
            async with flushing:
                last_flush = self._monotonic()
                batch, unsaved[:] = list(unsaved), []
                seq += 1
                # The answers first, then the counts: a crash in between is repaired at the
                # next run, which counts from the parts.
                await asyncio.to_thread(write_part, self._artifacts, generation.id,
                                        generation.attempts, seq, batch)
                saved.update((answer.row, answer) for answer in batch)
                if await asyncio.to_thread(self._report, generation.id, tally):
                    self._events.publish(generation.id)
                else:
                    stop.set()

        async def answer_one(i: int) -> None:
            answer = await self._answer(generation, i, texts[i])
            unsaved.append(answer)
            tally.add(answer)
            await flush()

        try:
            await self._run_workers([i for i in range(len(texts)) if i not in saved],
                                    generation.options.concurrency, answer_one, stop)
        finally:
            if unsaved:   # what was answered stays answered (and billed), even on failure
                await asyncio.shield(flush(force=True))
        return tally

    async def _answer(self, generation: TextGeneration, index: int,
                      prompt: str | None) -> RowAnswer:
        if prompt is None or not prompt.strip():
            return RowAnswer(index, None, None, 0, 0, "the prompt is empty")
        g = generation.options
        call = CompletionCall(
            model=generation.model, prompt=prompt, account_id=generation.account_id,
            user_id=generation.user_id, max_tokens=g.max_tokens, temperature=g.temperature,
            top_p=g.top_p, stop=g.stop, seed=g.seed, request_id=f"{generation.id}/{index}")
        try:
            answer = await self._complete(call, index)
        except InvalidArgument as exc:   # this row's input: the others can still be answered
            return RowAnswer(index, None, None, 0, 0, exc.message)
        return RowAnswer(index, answer.text, answer.finish_reason or None, answer.prompt_tokens,
                         answer.completion_tokens)

    def _report(self, generation_id: str, tally: _Tally) -> bool:
        """Write progress; False when the generation is no longer RUNNING (cancelled)."""
        def work(tx: Tx) -> bool:
            generation = tx.generations.get(generation_id)
            if generation is None or generation.status is not EvaluationStatus.RUNNING:
                return False
            generation.report(tally.done, tally.failed, tally.prompt_tokens,
                              tally.completion_tokens, self._clock())
            tx.generations.save(generation)
            return True
        return self._store.run(work)

    def _finish(self, generation: TextGeneration, table, answers: dict[int, RowAnswer],
                tally: _Tally) -> TextGeneration:
        """Write the table from the saved answers (`answers`: those in the parts) and record
        SUCCESS with their counts."""
        missing = table.num_rows - len(answers)
        if missing:
            raise FinetuneError(f"{missing} rows have no saved answer")   # never expected
        self._check_access(generation)
        path = result_file(table, answers, self._catalog.spool_dir)
        target = qualified_name(generation.into, "table name")
        try:
            self._catalog.load_table(generation.account_id, target,
                                     SpooledUpload(path, FileFormat.PARQUET), replace=False)
        except AlreadyExists:
            # A run that wrote the table was killed before recording it: that table is ours
            # when it has our columns and rows; anything else is somebody else's.
            if not self._wrote(generation, table.column_names):
                raise
        finally:
            path.unlink(missing_ok=True)

        def work(tx: Tx) -> TextGeneration:
            current = tx.generations.get(generation.id)
            if current is None or current.status is not EvaluationStatus.RUNNING:
                raise Stopped()
            current.report(tally.done, tally.failed, tally.prompt_tokens,
                           tally.completion_tokens, self._clock())
            current.succeed(self._clock())
            return tx.generations.save(current)

        finished = self._store.run(work)
        self._artifacts.delete(generation_uri(self._artifacts, generation.id, "parts"))
        log.info("generation %s succeeded: %d rows into %s (%d with an error)", finished.id,
                 finished.rows, finished.into, finished.rows_failed)
        return finished

    def _wrote(self, generation: TextGeneration, input_columns: list[str]) -> bool:
        if generation.attempts < 2:
            return False
        info = self._catalog.find_relation(generation.account_id,
                                           qualified_name(generation.into, "table name"))
        return info is not None and info.row_count == generation.rows and \
            [c for c, _ in info.columns] == [*input_columns, *OUTPUT_COLUMNS]

