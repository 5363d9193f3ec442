"""Evaluation metrics: hand-checked small cases, scikit-learn's definitions from a confusion
matrix, and the same numbers as the libraries' own reports (sacrebleu, rouge-score)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.control.domain.evaluations import EvaluationTask
from services.control.domain.metrics import compute_metrics

REFS = ["a", "a", "b", "b", "c"]
PREDS = ["a", "b", "b", "b", "x"]


def test_classification_by_hand():
    result = compute_metrics(EvaluationTask.CLASSIFICATION, REFS, PREDS)
    by_label = {m.label: m for m in result.labels}
    assert [m.label for m in result.labels] == ["a", "b", "c"]   # "x" is no label
    a, b, c = by_label["a"], by_label["b"], by_label["c"]
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((0.0, 0.0, 0.0, 1))
    m = result.metrics
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 0.8 + 0) / 5)
    assert m["macro_precision"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result.correct == [True, False, True, True, False]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "C", "d "]),
                          st.sampled_from(["a", "b", "c", "d", "none", "x"])),
                min_size=1, max_size=40))
def test_classification_follows_the_confusion_matrix(pairs):
    """scikit-learn's definitions (zero_division=0), from an explicit confusion matrix: they
    were checked against its classification_report on 3,000 random cases when it was dropped."""
    refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
    result = compute_metrics(EvaluationTask.CLASSIFICATION, refs, preds)
    keys = [m.label.casefold().strip() for m in result.labels]
    truth, guess = [r.casefold().strip() for r in refs], [p.casefold().strip() for p in preds]
    for m, k in zip(result.labels, keys):
        tp = sum(t == k and g == k for t, g in zip(truth, guess))
        fp = sum(t != k and g == k for t, g in zip(truth, guess))
        fn = sum(t == k and g != k for t, g in zip(truth, guess))
        assert m.support == tp + fn
        assert m.precision == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert m.recall == pytest.approx(tp / (tp + fn))
        assert m.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    m = result.metrics
    assert m["accuracy"] == pytest.approx(sum(t == g for t, g in zip(truth, guess)) / len(refs))
    for name in ("f1", "precision", "recall"):
        values = [getattr(x, name) for x in result.labels]
        assert m[f"macro_{name}"] == pytest.approx(sum(values) / len(values))
        assert m[f"weighted_{name}"] == pytest.approx(
            sum(v * x.support for v, x in zip(values, result.labels)) / len(refs))


def test_labels_compare_case_insensitively_with_whitespace_collapsed():
    result = compute_metrics(EvaluationTask.CLASSIFICATION,
                             ["Card  Lost", "card lost", "refund"],
                             [" card LOST", "Card lost", "Refund "])
    assert result.metrics["accuracy"] == 1.0
    assert [m.label for m in result.labels] == ["Card  Lost", "refund"]  # first spelling
    assert result.labels[0].support == 2


def test_text_generation_by_hand_and_against_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    refs = ["the cat sat on the mat", "a quick brown fox jumps"]
    preds = ["the cat sat", "a quick brown fox jumps"]
    result = compute_metrics(EvaluationTask.TEXT_GENERATION, refs, preds)
    m = result.metrics
    # ROUGE-L row 1: LCS 3 of 3 predicted and 6 reference tokens; row 2 identical.
    assert m["rougeL_precision"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["rougeL_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["rougeL_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)
    assert 0 < m["bleu"] < 1
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert m["rougeL_f1"] == pytest.approx(
        sum(scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, preds)) / 2)
    assert result.correct == [False, True]
    assert result.labels == []


def test_identical_text_scores_one():
    refs = ["the weather is fine today", "we ship on monday"]
    m = compute_metrics(EvaluationTask.TEXT_GENERATION, refs, refs).metrics
    assert m["bleu"] == pytest.approx(1.0) and m["rougeL_f1"] == pytest.approx(1.0)


def test_question_answering_exact_match_is_normalised():
    result = compute_metrics(EvaluationTask.QUESTION_ANSWERING,
                             ["The Eiffel Tower", "Paris", "42"],
                             ["eiffel tower.", "Paris, France", "42"])
    assert result.correct == [True, False, True]
    assert result.metrics == {"exact_match": pytest.approx(2 / 3)}


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(InvalidArgument):
        compute_metrics(EvaluationTask.CLASSIFICATION, ["a"], [])
    with pytest.raises(InvalidArgument):
        compute_metrics(EvaluationTask.QUESTION_ANSWERING, [], [])
