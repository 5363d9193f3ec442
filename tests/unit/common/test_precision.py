"""The precision decision with fake timings, its cache, and the real probes on a tiny model."""

from __future__ import annotations

import json
import math
import multiprocessing

import pytest

from services.common import precision
from services.common.precision import BF16, FP32, Choice, ProbeCache, Timing, choose, decide


def test_the_fastest_sound_candidate_wins():
    assert decide([Timing(FP32, 2.0, 0.0), Timing(BF16, 1.0, 0.01)]) == BF16
    assert decide([Timing(FP32, 1.0, 0.0), Timing(BF16, 1.5, 0.01)]) == FP32


def test_a_fast_but_wrong_candidate_loses():
    assert decide([Timing(FP32, 2.0, 0.0), Timing(BF16, 0.1, 0.5)]) == FP32
    assert decide([Timing(FP32, 2.0, 0.0), Timing(BF16, 0.1, math.inf)]) == FP32
    assert decide([Timing(FP32, 2.0, 0.0), Timing(BF16, math.nan, 0.0)]) == FP32


def test_a_tie_keeps_fp32_and_nothing_sound_means_fp32():
    assert decide([Timing(BF16, 1.0, 0.0), Timing(FP32, 1.0, 0.0)]) == FP32
    assert decide([Timing(BF16, 1.0, 1.0)]) == FP32
    assert decide([]) == FP32


def fake_probe(timings: dict[str, tuple[float, float]], calls: list):
    def probe(candidates):
        calls.append(list(candidates))
        return [Timing(d, *timings[d]) for d in candidates]
    return probe


def test_choose_probes_once_then_reads_the_cache(tmp_path):
    cache, calls = ProbeCache(tmp_path / "p.json"), []
    probe = fake_probe({FP32: (0.2, 0.0), BF16: (0.1, 0.004)}, calls)
    first = choose("training", [BF16], probe, "key-1", cache)
    assert (first.dtype, first.source) == (BF16, "probe")
    assert calls == [[FP32, BF16]]                # fp32 first: the reference
    again = choose("training", [BF16], probe, "key-1", cache)
    assert (again.dtype, again.source, again.timings) == (BF16, "cache", first.timings)
    assert len(calls) == 1
    assert again.speedup() == pytest.approx(2.0)
    assert "bf16 100.0 ms" in again.summary() and "measured earlier" in again.summary()
    # another machine or model: another key, another probe
    choose("training", [BF16], probe, "key-2", cache)
    assert len(calls) == 2
    assert set(json.loads((tmp_path / "p.json").read_text())) == {"key-1", "key-2"}


def test_without_candidates_fp32_is_chosen_unmeasured(tmp_path):
    calls = []
    choice = choose("serving", [], fake_probe({}, calls), "k", ProbeCache(tmp_path / "p.json"))
    assert (choice.dtype, choice.source, calls) == (FP32, "unsupported", [])


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    calls = []
    choice = choose("serving", [BF16], fake_probe({FP32: (1.0, 0.0), BF16: (2.0, 0.0)}, calls),
                    "k", ProbeCache(path))
    assert choice.dtype == FP32 and len(calls) == 1
    assert ProbeCache(path).get("k").dtype == FP32


def test_unknown_workload_is_refused(tmp_path):
    with pytest.raises(ValueError):
        choose("juggling", [BF16], fake_probe({}, []), "k", ProbeCache(tmp_path / "p.json"))


def test_the_key_follows_machine_model_threads_and_workload():
    shape = {"hidden_size": 64}
    base = precision.machine_key("training", shape, "cpu", 2, {"avx2"})
    assert base == precision.machine_key("training", shape, "cpu", 2, {"avx2"})
    assert base != precision.machine_key("serving", shape, "cpu", 2, {"avx2"})
    assert base != precision.machine_key("training", shape, "cpu", 1, {"avx2"})
    assert base != precision.machine_key("training", shape, "cpu", 2, {"avx512_bf16"})
    assert base != precision.machine_key("training", {"hidden_size": 96}, "cpu", 2, {"avx2"})


def _probe_in_process(path: str, key: str, out) -> None:
    import time

    def slow(candidates):
        time.sleep(0.3)
        out.put("probed")
        return [Timing(d, 1.0 if d == FP32 else 0.5, 0.0) for d in candidates]

    out.put(choose("training", [BF16], slow, key, ProbeCache(path)).source)


def test_processes_starting_together_probe_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_probe_in_process, args=(str(tmp_path / "p.json"), "k", out))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = sorted(out.get(timeout=5) for _ in range(3))
    assert results == ["cache", "probe", "probed"]


def test_the_real_probes_measure_a_tiny_model(tiny_model_dir, tmp_path):
    """Both probes run the real work on a tiny model: every candidate timed, bf16 close to fp32
    where the CPU can run it, and a decision among them."""
    candidates = [FP32, BF16] if precision.cpu_bf16_supported() else [FP32]
    for probe in (precision.training_probe(str(tiny_model_dir), tokens=64, sequence=32,
                                           repeats=1),
                  precision.serving_probe(str(tiny_model_dir), prefill_tokens=32,
                                          decode_batch=4, repeats=1)):
        timings = probe(candidates)
        assert [t.dtype for t in timings] == candidates
        assert all(t.seconds > 0 and t.sound for t in timings), timings
        assert timings[0].error == 0.0
        assert decide(timings) in candidates


def test_choose_training_caches_per_model(tiny_model_dir, tmp_path):
    cache = ProbeCache(tmp_path / "p.json")
    first = precision.choose_training(str(tiny_model_dir), cache=cache)
    assert first.source in ("probe", "unsupported")
    if first.source == "probe":
        assert precision.choose_training(str(tiny_model_dir), cache=cache).source == "cache"


def test_a_choice_round_trips_through_json():
    choice = Choice(BF16, "serving", "probe", (Timing(FP32, 2.0, 0.0), Timing(BF16, 1.0, 0.01)),
                    "k")
    back = Choice.from_json(json.loads(json.dumps(choice.to_json())), "k")
    assert (back.dtype, back.timings, back.source) == (BF16, choice.timings, "cache")
