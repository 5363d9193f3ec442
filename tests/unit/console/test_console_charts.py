"""training_results.csv and progress events as loss series; usage rows as daily series."""

import math

import pytest

from finetune.control.v1 import jobs_pb2
from services.console.charts import (
    ChartError,
    daily_chart,
    day_seconds,
    loss_chart_from_csv,
    loss_chart_from_events,
)


def test_the_trainers_csv_becomes_a_training_line_and_validation_points():
    chart = loss_chart_from_csv("step,epoch,training_loss,validation_loss\n"
                                "1,1,2.0,\n2,1,1.5,1.6\n3,2,1.25,\n")
    assert chart.x == [1.0, 2.0, 3.0]
    assert chart.series[0].label == "training loss" and chart.series[0].values == [2.0, 1.5, 1.25]
    assert chart.series[1].values == [None, 1.6, None] and chart.series[1].points_only
    assert chart.points == 4
    assert chart.as_json()["series"][1] == {"label": "validation loss",
                                            "values": [None, 1.6, None], "points_only": True}


def test_without_validation_there_is_one_series():
    chart = loss_chart_from_csv("step,epoch,training_loss,validation_loss\n1,1,2.0,\n")
    assert [s.label for s in chart.series] == ["training loss"]


def test_non_finite_losses_are_gaps_json_can_carry():
    chart = loss_chart_from_csv("step,training_loss\n1,nan\n2,inf\n3,1.0\n")
    assert chart.series[0].values == [None, None, 1.0]


@pytest.mark.parametrize("text, message", [
    ("step,loss\n1,2\n", "no training_loss column"),
    ("epoch,training_loss\n1,2\n", "no step column"),
    ("step,training_loss\n1,x\n", "line 2: not a number: 'x'"),
    ("step,training_loss\n,1\n", "line 2: the step is empty"),
])
def test_a_malformed_file_says_what_is_wrong(text, message):
    with pytest.raises(ChartError, match=message):
        loss_chart_from_csv(text)


def test_an_empty_file_is_an_empty_chart():
    assert loss_chart_from_csv("step,epoch,training_loss,validation_loss\n").points == 0


def test_progress_events_with_losses_become_points_by_step():
    events = [jobs_pb2.JobEvent(message="created"),
              jobs_pb2.JobEvent(metrics={"step": 4, "epoch": 1, "training_loss": 1.5}),
              jobs_pb2.JobEvent(metrics={"step": 4, "validation_loss": 1.7}),
              jobs_pb2.JobEvent(metrics={"step": 2, "training_loss": 0.0}),
              jobs_pb2.JobEvent(metrics={"step": 6, "training_loss": math.nan}),
              jobs_pb2.JobEvent(metrics={"step": 8})]
    chart = loss_chart_from_events(events)
    assert chart.x == [2.0, 4.0, 6.0]
    assert chart.series[0].values == [0.0, 1.5, None]     # a zero loss is a loss
    assert chart.series[1].values == [None, 1.7, None]


def test_daily_points_are_summed_per_series_over_every_day():
    chart = daily_chart([("2025-02-27", "b", 1.0), ("2025-03-01", "a", 2.0),
                         ("2025-03-01", "a", 3.0)], min_days=1)
    assert chart.time_axis and len(chart.x) == 3            # 27, 28 February, 1 March
    assert chart.x[0] == day_seconds("2025-02-27") == 1740614400.0
    assert chart.x[2] - chart.x[0] == 2 * 86400
    assert [(s.label, s.values) for s in chart.series] == [("a", [0.0, 0.0, 5.0]),
                                                           ("b", [1.0, 0.0, 0.0])]


def test_a_daily_chart_spans_a_week_at_least():
    chart = daily_chart([("2025-03-01", "a", 2.0)])
    assert len(chart.x) == 7 and chart.x[-1] == day_seconds("2025-03-01")
    assert chart.series[0].values == [0.0] * 6 + [2.0]


def test_no_usage_is_an_empty_daily_chart_and_a_bad_day_fails_here():
    assert daily_chart([]).x == [] and daily_chart([]).points == 0
    with pytest.raises(ValueError):
        daily_chart([("March 1", "a", 1.0)])
