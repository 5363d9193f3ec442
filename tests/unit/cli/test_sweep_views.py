"""`finetune sweeps`: the option spellings, the trials table and the comparison chart, from
messages alone."""

from __future__ import annotations

import pytest

from finetune.control.v1 import sweeps_pb2
from services.cli.sweep_commands import (
    comparison_png,
    parse_range,
    parse_values,
    sweep_details,
    trials_table,
)
from services.console.charts import Chart, Series


def test_short_spellings_and_ranges():
    assert parse_values("lr=1e-3,2e-3") == ("learning_rate", [1e-3, 2e-3])
    assert parse_values("Rank=8,16") == ("lora_rank", [8.0, 16.0])
    assert parse_range("lr=1e-4:1e-2:log") == ("learning_rate", 1e-4, 1e-2, True)
    assert parse_range("dropout=0:0.2") == ("lora_dropout", 0.0, 0.2, False)
    for bad in ("lr", "lr=", "lr=a,b"):
        with pytest.raises(ValueError):
            parse_values(bad)
    for bad in ("lr=1", "lr=1:2:linear", "lr=a:b"):
        with pytest.raises(ValueError):
            parse_range(bad)


def sweep() -> sweeps_pb2.Sweep:
    s = sweeps_pb2.Sweep(id="sw_1", model="public.public.bot", objective="validation_loss",
                         minimize=True, status=sweeps_pb2.SWEEP_SUCCEEDED, best_trial=2,
                         progress=1.0)
    s.trials.add(index=1, parameters={"learning_rate": 1e-3}, status=sweeps_pb2.TRIAL_SUCCESS,
                 validation_loss=0.5, objective=0.5, job_id="ft_1",
                 model="public.public.bot__trial_1")
    s.trials.add(index=2, parameters={"learning_rate": 2e-3}, status=sweeps_pb2.TRIAL_SUCCESS,
                 validation_loss=0.3, objective=0.3, job_id="ft_2", best=True,
                 model="public.public.bot")
    s.trials.add(index=3, parameters={"learning_rate": 4e-3}, status=sweeps_pb2.TRIAL_SKIPPED,
                 error="over the token budget")
    return s


def test_the_trials_table_marks_the_best():
    table = trials_table(sweep())
    assert table.row_count == 3
    assert [c for c in table.columns[0].cells] == ["1", "2*", "3"]
    assert list(table.columns[-1].cells)[2] == "over the token budget"
    assert sweep_details(sweep()).row_count == 12   # 11 fields and the trials


def test_the_comparison_chart_is_a_png_of_every_trial():
    curves = {i: Chart("step", [1.0, 2.0, 3.0], [
        Series("training loss", [2.0 / i, 1.5 / i, 1.0 / i]),
        Series("validation loss", [None, None, 1.2 / i], points_only=True)]) for i in (1, 2)}
    png = comparison_png(sweep(), curves)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
