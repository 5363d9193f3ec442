"""Runs evaluations in the background of the control process: claims PENDING ones, sends their
prompts to the inference service (`concurrency` requests in flight), records progress at most
about once a second, honours cancel, computes the metrics and writes the result files.

It keeps no state that matters outside the database and the artifact store: when control
starts, evaluations a previous process left RUNNING are put back to PENDING and run again from
scratch (their rows were frozen at EvaluateModel, so the rerun sees the same data).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from services.common.artifacts import ArtifactStore
from services.common.errors import Unavailable
from services.control.core.authorization import load_access
from services.control.core.background_runner import BackgroundRunner, RunnerSettings, Stopped
from services.control.core.clock import Clock, utc_now
from services.control.core.evaluations import require_model_call
from services.control.core.notifier import ChangeNotifier
from services.control.data.evaluation_data import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    evaluation_uri,
    metrics_csv,
    predictions_csv,
    read_rows,
)
from services.control.dispatch.inference import CompletionCall, CompletionClient
from services.control.domain.evaluations import (
    Evaluation,
    EvaluationStatus,
    answer_choices,
    prediction_text,
)
from services.control.domain.metrics import compute_metrics
from services.control.store.database import Store, Tx

log = logging.getLogger(__name__)

__all__ = ["EvaluationRunner", "RunnerSettings"]


@dataclass
class _Tally:
    done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvaluationRunner(BackgroundRunner):
    what = "evaluation"

    def __init__(self, store: Store, artifacts: ArtifactStore, client: CompletionClient | None,
                 events: ChangeNotifier, settings: RunnerSettings = RunnerSettings(),
                 clock: Clock = utc_now, monotonic: Callable[[], float] = time.monotonic):
        super().__init__(store, client, events, settings, clock, monotonic)
        self._artifacts = artifacts

    def _items(self, tx: Tx):
        return tx.evaluations

    # -- one evaluation -------------------------------------------------------------------

    async def _execute(self, evaluation: Evaluation, stop: asyncio.Event) -> Evaluation:
        if self._client is None:
            raise Unavailable("no inference service configured")
        await asyncio.to_thread(self._check_access, evaluation)
        assert evaluation.data_uri is not None   # set when the evaluation was created
        rows = await asyncio.to_thread(read_rows, self._artifacts, evaluation.data_uri)
        tally = _Tally()
        choices = answer_choices(evaluation.task, evaluation.generation,
                                 [row["reference"] for row in rows])
        predictions = await self._generate(evaluation, rows, choices, tally, stop)
        return await asyncio.to_thread(self._finish, evaluation, rows, predictions, tally)

    def _check_access(self, evaluation: Evaluation) -> None:
        """Privileges as of now (the user may have lost them since EvaluateModel); inference
        checks them again on every call it does not have cached."""
        def work(tx: Tx) -> None:
            access = load_access(tx, evaluation.account_id, evaluation.user_id)
            require_model_call(access, evaluation.model, bool(evaluation.adapter_id))
        self._store.run(work)

    async def _generate(self, evaluation: Evaluation, rows: list[dict],
                        choices: tuple[str, ...], tally: _Tally,
                        stop: asyncio.Event) -> list[str]:
        predictions: list[str | None] = [None] * len(rows)
        flushing = asyncio.Lock()
        last_flush = self._monotonic()

        async def flush(force: bool = False) -> None:
            nonlocal last_flush
            if flushing.locked() or (not force and self._monotonic() - last_flush
                                     < self._settings.flush_interval_s):
                return
            async with flushing:
                last_flush = self._monotonic()
                still_running = await asyncio.to_thread(self._report, evaluation.id, tally)
                if still_running:
                    self._events.publish(evaluation.id)
                else:
                    stop.set()

        async def predict(i: int) -> None:
            answer = await self._call(evaluation, i, rows[i], choices)
            predictions[i] = prediction_text(answer.text, evaluation.task)
            tally.done += 1
            tally.prompt_tokens += answer.prompt_tokens
            tally.completion_tokens += answer.completion_tokens
            await flush()

        await self._run_workers(list(range(len(rows))), evaluation.generation.concurrency,
                                predict, stop)
        return [p or "" for p in predictions]

    async def _call(self, evaluation: Evaluation, index: int, row: dict,
                    choices: tuple[str, ...]):
        g = evaluation.generation
        return await self._complete(CompletionCall(
            model=evaluation.model, prompt=row["prompt"], account_id=evaluation.account_id,
            user_id=evaluation.user_id, max_tokens=g.max_tokens, temperature=g.temperature,
            top_p=g.top_p, stop=g.stop, seed=g.seed, choices=choices,
            request_id=f"{evaluation.id}/{evaluation.attempts}/{index}"), index)

    def _report(self, evaluation_id: str, tally: _Tally) -> bool:
        """Write progress; False when the evaluation is no longer RUNNING (cancelled)."""
        def work(tx: Tx) -> bool:
            evaluation = tx.evaluations.get(evaluation_id)
            if evaluation is None or evaluation.status is not EvaluationStatus.RUNNING:
                return False
            evaluation.report(tally.done, tally.prompt_tokens, tally.completion_tokens,
                              self._clock())
            tx.evaluations.save(evaluation)
            return True
        return self._store.run(work)

    def _finish(self, evaluation: Evaluation, rows: list[dict], predictions: list[str],
                tally: _Tally) -> Evaluation:
        references = [row["reference"] for row in rows]
        result = compute_metrics(evaluation.task, references, predictions)
        self._artifacts.write_bytes(
            evaluation_uri(self._artifacts, evaluation.id, METRICS_FILE),
            metrics_csv(result.metrics, result.labels))
        self._artifacts.write_bytes(
            evaluation_uri(self._artifacts, evaluation.id, PREDICTIONS_FILE),
            predictions_csv(rows, predictions, result.correct))

        def work(tx: Tx) -> Evaluation:
            current = tx.evaluations.get(evaluation.id)
            if current is None or current.status is not EvaluationStatus.RUNNING:
                raise Stopped()
            current.report(tally.done, tally.prompt_tokens, tally.completion_tokens,
                           self._clock())
            current.succeed(result.metrics, result.labels, self._clock())
            return tx.evaluations.save(current)

        finished = self._store.run(work)
        log.info("evaluation %s succeeded: %s %.4f", finished.id, finished.primary_metric,
                 finished.primary_value or 0.0)
        return finished

