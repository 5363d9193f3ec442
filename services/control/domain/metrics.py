"""Evaluation metrics over lists of strings: classification by scikit-learn's definitions
(computed here: importing scikit-learn would make transformers import it too, in every trainer
and engine process), sacrebleu (corpus BLEU-4) and rouge-score (ROUGE-L). Pure: no
I/O. Every metric is in 0-1 (BLEU too: sacrebleu's 0-100 score / 100), so min_improvement has
one unit whatever the task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from services.common.errors import InvalidArgument
from services.control.domain.evaluations import (
    EvaluationTask,
    LabelMetric,
    answer_key,
    label_key,
    label_spellings,
)


@dataclass(frozen=True)
class TaskMetrics:
    metrics: dict[str, float]
    labels: list[LabelMetric] = field(default_factory=list)  # classification only, by label
    correct: list[bool] = field(default_factory=list)        # per row, for predictions.csv


def compute_metrics(task: EvaluationTask, references: Sequence[str],
                    predictions: Sequence[str]) -> TaskMetrics:
    if len(references) != len(predictions):
        raise InvalidArgument(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise InvalidArgument("no rows to evaluate")
    if task is EvaluationTask.CLASSIFICATION:
        return classification_metrics(references, predictions)
    if task is EvaluationTask.TEXT_GENERATION:
        return text_generation_metrics(references, predictions)
    return question_answering_metrics(references, predictions)


def classification_metrics(references: Sequence[str], predictions: Sequence[str]) -> TaskMetrics:
    """Per-label precision/recall/F1/support, accuracy, macro and weighted averages.

    Labels compare case-insensitively with whitespace collapsed; each is shown as its first
    spelling among the references. The per-label rows and the macro/weighted averages cover the
    labels the references use: a generated answer that is no label at all counts against the
    recall of the true label (and accuracy) but adds no label of its own, so a chatty base
    model does not add dozens of zero-support rows that would dilute macro-F1."""
    shown = label_spellings(references)
    y_true = [label_key(r) for r in references]
    y_pred = [label_key(p) for p in predictions]
    keys = sorted(shown, key=lambda k: (shown[k], k))
    support, predicted = Counter(y_true), Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred, strict=True) if t == p)
    labels = []
    for k in keys:   # scikit-learn's precision_recall_fscore_support, zero_division=0
        precision = hits[k] / predicted[k] if predicted[k] else 0.0
        recall = hits[k] / support[k]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        labels.append(LabelMetric(label=shown[k], precision=precision, recall=recall, f1=f1,
                                  support=support[k]))
    metrics = {"accuracy": sum(hits.values()) / len(y_true)}
    total = sum(m.support for m in labels)
    for name in ("f1", "precision", "recall"):
        values = [getattr(m, name) for m in labels]
        metrics[f"macro_{name}"] = sum(values) / len(values)
        metrics[f"weighted_{name}"] = sum(v * m.support for v, m in zip(values, labels,
                                                                         strict=True)) / total
    return TaskMetrics(metrics, labels, [t == p for t, p in zip(y_true, y_pred, strict=True)])


def text_generation_metrics(references: Sequence[str],
                            predictions: Sequence[str]) -> TaskMetrics:
    """Corpus BLEU-4 (sacrebleu's defaults: 13a tokenizer, exponential smoothing) and ROUGE-L
    precision/recall/F1 averaged over rows (Porter stemming, as the ROUGE paper's setup)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"] for r, p in zip(references, predictions, strict=True)]
    n = len(scores)
    metrics = {
        "bleu": float(bleu),
        "rougeL_precision": sum(s.precision for s in scores) / n,
        "rougeL_recall": sum(s.recall for s in scores) / n,
        "rougeL_f1": sum(s.fmeasure for s in scores) / n,
    }
    return TaskMetrics(metrics, [], [label_key(r) == label_key(p)
                                     for r, p in zip(references, predictions, strict=True)])


def question_answering_metrics(references: Sequence[str],
                               predictions: Sequence[str]) -> TaskMetrics:
    """Exact match after SQuAD's normalisation (case, punctuation, articles, whitespace)."""
    correct = [answer_key(r) == answer_key(p) for r, p in zip(references, predictions, strict=True)]
    return TaskMetrics({"exact_match": sum(correct) / len(correct)}, [], correct)
