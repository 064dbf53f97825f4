"""The benchmark harness's accounting of stage compute from Ray's timeline (benchmarks/run.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("run")


def event(cat, tid, start_s, dur_s):
    return {"ph": "X", "cat": cat, "tid": tid, "ts": start_s * 1e6, "dur": dur_s * 1e6}


def test_union_counts_overlaps_once():
    assert bench._union_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert bench._union_seconds([]) == 0


def test_stage_compute_is_task_execution_and_each_trial_from_first_train_to_last_save():
    events = [
        event("task::pipeline.run.pretrain_task", "w1", 10, 3),
        event("task:deserialize_arguments", "w1", 10, 0.5),
        event("task:execute", "w1", 10.5, 2.4),            # compute: 10.5 .. 12.9
        event("task::pipeline.run.admm_task", "w1", 13, 10),
        event("task:execute", "w1", 13, 10),                 # Tune's own loop: not stage compute
        event("task::ImplicitFunc.__init__", "a1", 14, 1),
        event("task::ImplicitFunc.train", "a1", 15, 0.1),
        event("task::ImplicitFunc.train", "a1", 16, 0.1),
        event("task::ImplicitFunc.save", "a1", 17, 0.05),   # trial 1: 15 .. 17.05
        event("task::ImplicitFunc.reset", "a1", 17.5, 0.01),
        event("task::ImplicitFunc.train", "a1", 18, 0.1),
        event("task::ImplicitFunc.stop", "a1", 19, 0.01),    # trial 2: 18 .. 18.1
        event("task::pipeline.run.write_results", "w2", 20, 1),
        event("task:execute", "w2", 20, 1),                  # tables: outside stage compute
    ]
    spans = sorted(bench.stage_compute_spans(events))
    assert [s[:2] for s in spans] == [pytest.approx((10.5, 12.9)), pytest.approx((15, 17.05)),
                                      pytest.approx((18, 18.1))]
    assert [s[2] for s in spans] == ["stage", "trial", "trial"]


def test_the_time_outside_stage_compute_is_split_by_where_it_falls():
    spans = [(5, 8, "stage"), (10, 12, "trial"), (11, 13, "trial"), (13.5, 15, "stage"), (16, 17, "stage")]
    parts = bench.outside_parts(spans, started=0, ray_started=1, ray_ready=3, ended=20)
    assert parts == pytest.approx({"before_ray": 1, "ray_start": 2, "to_first_stage": 2, "tune_start": 2,
                                   "between_stages": 1.5, "after_last_stage": 3})
    assert sum(parts.values()) + bench._union_seconds(spans) == pytest.approx(20)
