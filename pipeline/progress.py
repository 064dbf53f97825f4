"""Live progress of a run on the driver: Tune trials finished and Monte-Carlo trials done.

    tune trials   ━━━━━━━━━━━━╸━━━━━━━  4/6  best val 96.94 %   0:00:21
    monte carlo   ━━━━━━━━━━━━━━━━━━━━  300/300                 0:00:09

The Tuner runs inside a Ray task on a worker, so its callbacks cannot reach the driver's
bars directly. The driver creates a `TrialEvents` actor (zero CPUs) and passes its handle to
the admm task; pipeline.tuning's callback puts one event per trial result, completion and
error into it; the driver takes what has arrived every `POLL_S` while it waits for the
task (`follow_tune`). Monte-Carlo progress comes from the driver's own `ray.wait` loop.

`RunProgress` does the accounting (plain Python, testable without Ray or a terminal) and
draws it with rich on stderr. On a terminal the bars are live; elsewhere (a pipe, a CI log)
rich does not animate and prints the bars' final state once, when the run ends.
Library calls of pipeline.run.run_pipeline draw nothing unless asked (`progress=True`).
"""

from __future__ import annotations

import logging

import ray
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

POLL_S = 0.5
CONSOLE = Console(stderr=True)   # the bars and, from the CLI, the log lines: one console keeps them apart


class ConsoleHandler(logging.Handler):
    """A logging handler printing through a rich console, so log lines go above live bars, not through them."""

    def __init__(self, console: Console = CONSOLE):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class RunProgress:
    """What the driver knows of a run's progress, drawn as rich bars while it is entered (`with`).

    Tune events are dicts: {"event": "start"} when a search starts (again, after a retry of
    its task), {"event": "result" | "complete" | "error", "trial_id": ..., "val_accuracy": ...,
    "meets_target": ...}; a trial counts as finished once, whether it completed, was stopped
    early or failed.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or CONSOLE
        self.tune_total = 0
        self.tune_finished: set[str] = set()
        self.tune_failed: set[str] = set()
        self.tune_cached = False
        self.best_val_accuracy: float | None = None    # best among results that meet the compression target
        self.montecarlo_done = self.montecarlo_total = 0
        self._bars = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console)
        self._tune_bar = self._montecarlo_bar = None

    def __enter__(self):
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    # ---- Tune ----------------------------------------------------------------------------

    def tune_started(self, total: int) -> None:
        self.tune_total = total
        self._tune_bar = self._bars.add_task("tune trials", total=total, note="")

    def tune_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":        # the admm task ran again (a retry): its trials start over
            self.tune_finished.clear()
            self.tune_failed.clear()
            self.best_val_accuracy = None
        elif kind in ("result", "complete") and event.get("meets_target") and event.get("val_accuracy") is not None:
            accuracy = float(event["val_accuracy"])
            self.best_val_accuracy = max(accuracy, self.best_val_accuracy or accuracy)
        if kind in ("complete", "error"):
            self.tune_finished.add(event["trial_id"])
            if kind == "error":
                self.tune_failed.add(event["trial_id"])
        self._draw_tune()

    def tune_done(self, cached: bool = False) -> None:
        """The admm stage ended: a cached stage ran no trials, so its bar just completes."""
        self.tune_cached = cached
        self._draw_tune(completed=self.tune_total if cached else None)

    def tune_note(self) -> str:
        if self.tune_cached:
            return "cached"
        parts = [f"best val {100 * self.best_val_accuracy:.2f} %" if self.best_val_accuracy is not None
                 else "no trial at target yet" if self.tune_finished else ""]
        if self.tune_failed:
            parts.append(f"{len(self.tune_failed)} failed")
        return ", ".join(p for p in parts if p)

    def _draw_tune(self, completed: int | None = None) -> None:
        if self._tune_bar is not None:
            self._bars.update(self._tune_bar, completed=len(self.tune_finished) if completed is None else completed,
                              note=self.tune_note())

    # ---- Monte Carlo ---------------------------------------------------------------------

    def montecarlo(self, done: int, total: int) -> None:
        self.montecarlo_done, self.montecarlo_total = done, total
        if self._montecarlo_bar is None:
            self._montecarlo_bar = self._bars.add_task("monte carlo", total=total, note="")
        self._bars.update(self._montecarlo_bar, completed=done, total=total)


# ---- Ray: events from the Tuner's worker to the driver ----------------------------------------

@ray.remote(num_cpus=0, max_restarts=0)
class TrialEvents:
    """A mailbox: the Tune callback puts events, the driver takes every event that has arrived."""

    def __init__(self):
        self._events: list[dict] = []

    def put(self, event: dict) -> None:
        self._events.append(event)

    def take(self) -> list[dict]:
        events, self._events = self._events, []
        return events


def follow_tune(progress: RunProgress, events, report_ref: ray.ObjectRef) -> None:
    """Feed the admm task's trial events to `progress` until the task's report is ready."""
    while True:
        ready, _ = ray.wait([report_ref], timeout=POLL_S)
        for event in ray.get(events.take.remote()):   # after the task ends: every event it sent
            progress.tune_event(event)
        if ready:
            return
