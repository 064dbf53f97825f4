"""Faults: a driver killed during Monte Carlo resumes to the same tables; a killed worker's
task is retried and every row is written exactly once."""

import glob
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import psutil
import pytest
from click.testing import CliRunner

from pipeline.cli import main

# tiny settings, with a slow enough Monte Carlo (tile-level ADC, many small chunks) to be caught mid-way
SETTINGS = [
    "tune.early_stopping=none", "model.hidden=[32, 32]", "pretrain.epochs=5", "admm.epochs=2",
    "admm.rho_every=1", "admm.target_compression=4", "tune.num_samples=1", "retrain.epochs=1",
    "mapping.xbar_rows=16", "mapping.xbar_cols=16", "montecarlo.trials=24", "montecarlo.chunk_size=2",
    "montecarlo.scenarios=[{id: a, variation: lognormal, sigma: 0.1, adc_bits: 6}, "
    "{id: b, p_sa0: 0.01, p_sa1: 0.01, adc_bits: 5}]",
]


def args(root, run_id):
    out = ["run", "--run-id", run_id, "--quiet", "--set", f"output.root={root}"]
    for item in SETTINGS:
        out += ["--set", item]
    return out


def montecarlo(root, run_id):
    frame = pd.read_parquet(f"{root}/tables/montecarlo/run_id={run_id}")
    return frame.sort_values(["scenario_id", "trial"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reference"))
    result = CliRunner().invoke(main, args(root, "ref"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return montecarlo(root, "ref")


def test_a_driver_killed_during_monte_carlo_resumes_to_the_same_tables(ray_session, reference, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args(tmp_path, "crash"), "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    chunks = f"{tmp_path}/cache/montecarlo/*.pt"
    deadline = time.time() + 240
    while not glob.glob(chunks) and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = len(glob.glob(chunks))
    assert 0 < done_before < 24, "the driver was not caught during Monte Carlo"
    runs = pd.read_parquet(f"{tmp_path}/tables/runs/run_id=crash")
    assert runs["status"].item() == "running"                 # the crash left its mark, nothing half-written

    result = CliRunner().invoke(main, args(tmp_path, "crash"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import json
    manifest = json.load(open(f"{tmp_path}/runs/crash/manifest.json"))
    assert manifest["stages"]["retrain"]["status"] == "cached"
    assert manifest["stages"]["montecarlo"]["chunks_reused"] >= done_before
    resumed = montecarlo(tmp_path, "crash")
    assert not resumed.duplicated(["scenario_id", "trial"]).any()
    pd.testing.assert_frame_equal(resumed, reference)          # same seeds, same accuracies, same rows
    assert pd.read_parquet(f"{tmp_path}/tables/runs/run_id=crash")["status"].item() == "succeeded"


def test_a_killed_worker_is_retried_and_every_row_is_written_once(ray_session, reference, tmp_path):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=CliRunner().invoke(main, args(tmp_path, "kill"), catch_exceptions=False)))
    thread.start()
    killed = 0
    while thread.is_alive() and not killed:
        for proc in psutil.process_iter(["cmdline"]):
            if "ray::montecarlo_task" in " ".join(proc.info["cmdline"] or []):
                try:
                    proc.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
                break
        time.sleep(0.02)
    thread.join()
    assert killed == 1, "no Monte-Carlo worker was caught running"
    assert outcome["result"].exit_code == 0, outcome["result"].output
    rows = montecarlo(tmp_path, "kill")
    assert len(rows) == 2 * 24 and not rows.duplicated(["scenario_id", "trial"]).any()
    pd.testing.assert_frame_equal(rows, reference)
