"""How the CLI shows evaluations: metrics side by side with the difference, per-label rows."""

import pytest
from rich.console import Console

from finetune.control.v1 import evaluations_pb2 as ev
from services.cli import views
from services.cli.client import evaluation_task_value


def evaluation(id_, model, metrics, labels=()):
    return ev.Evaluation(id=id_, model=model, task=ev.CLASSIFICATION, primary_metric="macro_f1",
                         status=ev.EVALUATION_SUCCEEDED, rows=4, rows_done=4, metrics=metrics,
                         labels=[ev.LabelMetrics(label=l, precision=p, recall=r, f1=f, support=s)
                                 for l, p, r, f, s in labels])


def render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_two_evaluations_side_by_side_with_the_difference():
    base = evaluation("ev_base", "smollm2", {"accuracy": 0.25, "macro_f1": 0.1, "bleu": 3.0})
    tuned = evaluation("ev_tuned", "db.s.m", {"accuracy": 0.75, "macro_f1": 0.7})
    text = render(views.metrics_side_by_side([base, tuned]))
    lines = {line.split()[1]: line for line in text.splitlines() if line.count("│") > 2}
    assert "+0.5000" in lines["accuracy"] and "+0.6000" in lines["macro_f1"]
    assert "3.0000" in lines["bleu"] and lines["bleu"].split()[-2] == "-"  # missing on one side
    # the library order: accuracy before macro_f1 before the rest
    assert text.index("accuracy") < text.index("macro_f1") < text.index("bleu")


def test_labels_are_listed_once_with_each_models_scores():
    a = evaluation("ev_a", "a", {"macro_f1": 0.5}, [("x", 1.0, 0.5, 0.667, 2)])
    b = evaluation("ev_b", "b", {"macro_f1": 0.9}, [("x", 0.5, 1.0, 0.667, 2),
                                                   ("y", 1.0, 1.0, 1.0, 2)])
    text = render(views.labels_side_by_side([a, b]))
    assert "1.00 / 0.50 / 0.67" in text and "0.50 / 1.00 / 0.67" in text
    row_y = next(line for line in text.splitlines() if "│ y " in line)
    assert "-" in row_y and "1.00 / 1.00 / 1.00" in row_y


@pytest.mark.parametrize("name,value", [("classification", ev.CLASSIFICATION),
                                        ("Text-Generation", ev.TEXT_GENERATION),
                                        ("question_answering", ev.QUESTION_ANSWERING)])
def test_task_names(name, value):
    assert evaluation_task_value(name) == value


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown evaluation task 'summary'"):
        evaluation_task_value("summary")
