"""Ray job entrypoint: `python -m services.trainer.job --spec <spec uri>`.

Control submits it through the Ray Jobs API (submission_id = job id). The driver prepares the data
(tokenized once, here), runs the TorchTrainer, and exports the adapter and results. It exits
non-zero with a one-line reason on failure: Ray keeps the end of the log as the job's message.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Sequence

from services.common.artifacts import ArtifactStore
from services.common.errors import FailedPrecondition, FinetuneError, InvalidArgument
from services.trainer import data, export, reporting
from services.trainer.config import TrainerConfig, parse_config
from services.trainer.spec import JobSpec, base_model_folder, read_spec

log = logging.getLogger("services.trainer.job")


class Cancelled(Exception):
    """Control cancelled the job while it trained."""


@dataclass(frozen=True)
class PreparedData:
    train: data.FormattedData
    validation: data.FormattedData
    pad_id: int


def prepare_data(spec: JobSpec, store: ArtifactStore) -> PreparedData:
    """Read the job's snapshots and turn them into token ids with the base model's tokenizer."""
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(base_model_folder(spec))
    limits = data.TokenLimits.of(spec.base_model)

    def load(uri: str | None, what: str) -> data.FormattedData:
        if not uri:
            return data.FormattedData([], rows=0, truncated_rows=0)
        try:
            raw = store.read_bytes(uri)
        except FileNotFoundError:
            raise FailedPrecondition(f"{what} data {uri} does not exist") from None
        try:
            rows = data.parse_jsonl(raw, spec.task_type)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what} data: {exc.message}") from None
        return data.format_rows(spec.task_type, tokenizer, rows, limits)

    train = load(spec.training_data_uri, "training")
    if not train.examples:
        raise InvalidArgument("the training data has no rows")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    return PreparedData(train, load(spec.validation_data_uri, "validation"), int(pad_id or 0))


def run(spec: JobSpec, config: TrainerConfig, reporter: reporting.ProgressSink) -> dict:
    """Prepare, train, export; returns the manifest."""
    from services.trainer import launch, recipe

    store = ArtifactStore(spec.artifact_root)
    reporter.report(reporting.Progress(0.0, message="preparing data"), force=True)
    started = time.perf_counter()
    prepared = prepare_data(spec, store)
    # The job's events then show where the time to the first step goes (data, workers, model).
    reporter.report(reporting.Progress(0.0, message=(
        f"data ready in {time.perf_counter() - started:.1f} s: "
        f"{len(prepared.train.examples)} training and {len(prepared.validation.examples)} "
        "validation examples; starting the training workers")), force=True)
    log.info("job %s: %d training examples (%d tokens, %d truncated), %d validation examples",
             spec.job_id, len(prepared.train.examples), prepared.train.tokens,
             prepared.train.truncated_rows, len(prepared.validation.examples))

    result = launch.run_training(spec, prepared.train.examples, prepared.validation.examples,
                                 prepared.pad_id, config)
    metrics = result.return_value or {}  # what rank 0's training function returned
    if metrics.get("status") == "cancelled":
        raise Cancelled(f"job {spec.job_id} was cancelled after step {metrics.get('step')}")
    if metrics.get("status") != "completed" or result.checkpoint is None:
        raise RuntimeError(f"training ended without a final checkpoint (metrics: {metrics})")

    with result.checkpoint.as_directory() as folder:
        state = recipe.read_checkpoint_state(folder)
        # The exported adapter is the best validation epoch's; its losses describe the model.
        exported = (state.best_epoch or state.epoch) - 1
        summary = export.TrainingSummary(
            job_id=spec.job_id,
            trained_tokens=state.trained_tokens,
            training_loss=state.epoch_losses[exported],
            validation_loss=state.validation_losses[exported],
            epochs=state.epoch,
            steps=state.step,
            training_rows=prepared.train.rows,
            validation_rows=prepared.validation.rows,
            truncated_rows=prepared.train.truncated_rows + prepared.validation.truncated_rows,
            best_epoch=state.best_epoch,
            stop_reason=state.stop_reason,
            precision=metrics.get("precision"),
        )
        manifest = export.write_outputs(store, spec.output_uri,
                                        recipe.export_adapter_dir(folder),
                                        state.history, summary)
    reporter.report(reporting.Progress(1.0, state.epoch, state.step, state.step,
                                       state.trained_tokens, summary.training_loss,
                                       summary.validation_loss, "adapter exported"), force=True)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv, os.environ)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reporter: reporting.ProgressSink = reporting.NullReporter()
    try:
        spec = read_spec(config.spec_uri)
        reporter = reporting.connect(spec.control_address, config.service_token, spec.job_id)
        manifest = run(spec, config, reporter)
    except Cancelled as exc:
        return _fail(f"fine-tuning cancelled: {exc}")
    except FinetuneError as exc:
        return _fail(f"fine-tuning failed: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - the last line of the log is the job's error
        from services.trainer.launch import describe_failure

        log.exception("fine-tuning failed")
        return _fail(f"fine-tuning failed: {describe_failure(exc)}")
    finally:
        reporter.close()
    log.info("job %s done: %s", manifest["job_id"], manifest)
    return 0


def _fail(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
