"""The demo's sample tables: held-out tickets the training table does not contain or paraphrase,
every queue trained and evaluated, and the committed CSVs as the generator writes them."""

import csv
import importlib.util
import re
from collections import Counter

import pytest

from services.cli import demo

MIN_TRAINING_PER_QUEUE = 30
MIN_HELD_OUT_PER_QUEUE = 6
# Token Jaccard above this would make a held-out ticket a reworded training row.
MAX_SIMILARITY = 0.5


def read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def training():
    columns, rows = read(demo.TRAINING_FILE)
    assert columns == ["ticket_id", "prompt", "completion"]
    return rows


@pytest.fixture(scope="module")
def held_out():
    columns, rows = read(demo.HELD_OUT_FILE)
    assert columns == ["ticket_id", "prompt", "label"]
    return rows


def key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def tokens(text: str) -> set[str]:
    return set(key(text).split())


def test_every_queue_has_enough_rows_on_both_sides(training, held_out):
    trained = Counter(r["completion"] for r in training)
    evaluated = Counter(r["label"] for r in held_out)
    assert len(trained) >= 6
    assert all(re.fullmatch(r"[A-Z]{3}-\d{3}", code) for code in trained)
    assert min(trained.values()) >= MIN_TRAINING_PER_QUEUE, trained
    assert set(evaluated) == set(trained)   # no label the model was never taught, none untested
    assert min(evaluated.values()) >= MIN_HELD_OUT_PER_QUEUE, evaluated


def test_no_held_out_ticket_is_in_training_or_reworded_from_it(training, held_out):
    trained = [(tokens(r["prompt"]), r["prompt"]) for r in training]
    assert {key(r["prompt"]) for r in held_out}.isdisjoint(key(r["prompt"]) for r in training)
    for row in held_out:
        mine = tokens(row["prompt"])
        score, closest = max((len(mine & t) / len(mine | t), p) for t, p in trained)
        assert score <= MAX_SIMILARITY, (row["prompt"], closest)


def test_tickets_are_distinct_short_and_uniquely_numbered(training, held_out):
    for rows in (training, held_out):
        assert len({key(r["prompt"]) for r in rows}) == len(rows)
        assert all(4 <= len(r["prompt"].split()) <= 30 for r in rows)
    ids = [r["ticket_id"] for r in training + held_out]
    assert len(set(ids)) == len(ids)


def test_probes_are_one_trained_and_one_held_out_ticket(training, held_out):
    (seen, seen_code), (unseen, unseen_code) = demo.PROBES
    assert {"prompt": seen, "completion": seen_code} in [
        {"prompt": r["prompt"], "completion": r["completion"]} for r in training]
    assert {"prompt": unseen, "label": unseen_code} in [
        {"prompt": r["prompt"], "label": r["label"]} for r in held_out]


def test_the_committed_files_are_what_the_generator_writes(tmp_path):
    path = demo.SAMPLES / "support_tickets.py"
    spec = importlib.util.spec_from_file_location("support_tickets_generator", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write(tmp_path / "train.csv", tmp_path / "held_out.csv")
    assert (tmp_path / "train.csv").read_bytes() == demo.TRAINING_FILE.read_bytes()
    assert (tmp_path / "held_out.csv").read_bytes() == demo.HELD_OUT_FILE.read_bytes()
