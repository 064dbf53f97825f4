"""Live progress on the driver: the accounting without Ray, the events' path through Ray, and one tiny run."""

import io
import logging
from types import SimpleNamespace

import pandas as pd
from rich.console import Console
from test_pipeline_ray import TINY, invoke_run

from pipeline.config import load_config
from pipeline.progress import RunProgress, TrialEvents, follow_tune
from pipeline.run import run_pipeline


def quiet_console() -> tuple[Console, io.StringIO]:
    """A console that is not a terminal: rich draws the bars' final state once, when they stop."""
    buffer = io.StringIO()
    return Console(file=buffer, width=120, force_terminal=False), buffer


def event(kind, trial_id, val_accuracy=None, meets_target=None):
    return {"event": kind, "trial_id": trial_id, "val_accuracy": val_accuracy, "meets_target": meets_target}


# ---- accounting, no Ray ------------------------------------------------------------------

def test_each_trial_counts_once_and_the_best_is_among_trials_at_target():
    console, buffer = quiet_console()
    with RunProgress(console) as progress:
        progress.tune_started(3)
        progress.tune_event({"event": "start"})
        progress.tune_event(event("result", "a", 0.99, False))      # above the others but misses the target
        assert progress.best_val_accuracy is None
        progress.tune_event(event("result", "a", 0.90, True))
        progress.tune_event(event("complete", "a", 0.90, True))
        progress.tune_event(event("complete", "a", 0.90, True))     # the same trial again: still one
        assert progress.tune_finished == {"a"}
        progress.tune_event(event("error", "b"))
        progress.tune_event(event("result", "c", 0.95, True))
        progress.tune_event(event("complete", "c", 0.95, True))
        progress.tune_done()
    assert progress.tune_finished == {"a", "b", "c"} and progress.tune_failed == {"b"}
    assert progress.best_val_accuracy == 0.95
    text = buffer.getvalue()
    assert "tune trials" in text and "3/3" in text and "best val 95.00 %" in text and "1 failed" in text


def test_a_retried_search_starts_its_count_over():
    progress = RunProgress(quiet_console()[0])
    progress.tune_started(2)
    progress.tune_event(event("complete", "old", 0.9, True))
    progress.tune_event({"event": "start"})
    assert progress.tune_finished == set() and progress.best_val_accuracy is None


def test_a_cached_search_just_completes():
    console, buffer = quiet_console()
    with RunProgress(console) as progress:
        progress.tune_started(4)
        progress.tune_done(cached=True)
    assert "4/4" in buffer.getvalue() and "cached" in buffer.getvalue()


def test_montecarlo_counts_and_reused_chunks_start_done():
    console, buffer = quiet_console()
    with RunProgress(console) as progress:
        progress.montecarlo(6, 12)          # two chunks reused from the cache
        progress.montecarlo(9, 12)
        progress.montecarlo(12, 12)
    assert (progress.montecarlo_done, progress.montecarlo_total) == (12, 12)
    assert "12/12" in buffer.getvalue()


def test_off_a_terminal_the_bars_print_once_without_control_codes():
    console, buffer = quiet_console()
    with RunProgress(console) as progress:
        progress.tune_started(2)
        for trial in ("a", "b"):
            progress.tune_event(event("complete", trial, 0.9, True))
        progress.montecarlo(12, 12)
    text = buffer.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.count("tune trials") == 1 and text.count("monte carlo") == 1


# ---- Ray ---------------------------------------------------------------------------------

def test_events_reach_the_driver_through_the_actor(ray_session):
    """The Tune callback's calls, without Tune: trial objects need only an id and a last result."""
    from pipeline.tuning import _TrialEventsCallback

    events = TrialEvents.remote()
    callback = _TrialEventsCallback(events)
    trials = [SimpleNamespace(trial_id=t, last_result={"val_accuracy": 0.8, "meets_target": True}) for t in "ab"]
    callback.setup()
    callback.on_trial_result(1, trials, trials[0], {"val_accuracy": 0.85, "meets_target": True})
    callback.on_trial_complete(1, trials, trials[0])
    callback.on_trial_error(2, trials, trials[1])
    callback.on_experiment_end(trials)
    progress = RunProgress(quiet_console()[0])
    progress.tune_started(2)
    follow_tune(progress, events, ray_session.put(None))
    assert progress.tune_finished == {"a", "b"} and progress.tune_failed == {"b"}
    assert progress.best_val_accuracy == 0.85
    assert ray_session.get(events.take.remote()) == []


def test_a_run_reports_every_trial_and_every_montecarlo_trial_and_quiet_prints_neither(
        ray_session, tmp_path, caplog):
    root = str(tmp_path)
    cfg = load_config("quick", [*TINY, f"output.root={root}"])
    console, buffer = quiet_console()
    progress, calls = RunProgress(console), []
    caplog.set_level(logging.INFO, logger="memadmm")
    run_pipeline(cfg, run_id="progress", progress=progress, on_montecarlo=lambda d, t: calls.append((d, t)))

    tune = pd.read_parquet(f"{root}/tables/tune/run_id=progress")
    assert progress.tune_finished == set(tune["trial_id"]) and len(progress.tune_finished) == cfg.tune.num_samples
    total = len(cfg.montecarlo.scenarios) * cfg.montecarlo.trials
    assert (progress.montecarlo_done, progress.montecarlo_total) == (total, total)
    assert calls[-1] == (total, total)                   # the library callback still works
    text = buffer.getvalue()
    assert f"{cfg.tune.num_samples}/{cfg.tune.num_samples}" in text and f"{total}/{total}" in text
    lines = [r.getMessage() for r in caplog.records if r.name == "memadmm"]
    for stage in ("pretrain", "admm", "map", "retrain", "magnitude", "montecarlo", "tables"):
        assert any(line.startswith(f"stage {stage} ") and line.endswith("started") for line in lines), stage
        assert any(line.startswith(f"stage {stage} ") and "succeeded in" in line for line in lines), stage

    # --quiet: the same run again, every stage cached; no bars and no stage lines
    caplog.clear()
    output = invoke_run(root, "progress")
    assert "weight compression" in output
    for text in ("stage ", "tune trials", "monte carlo"):
        assert text not in output, text
    assert not [r for r in caplog.records if r.name == "memadmm" and r.getMessage().startswith("stage")]
