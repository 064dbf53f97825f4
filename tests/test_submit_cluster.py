"""`memadmm submit` against a real two-node Ray cluster on this machine, through the Jobs API.

The cluster (a head with the dashboard plus one more node, one CPU each, every process on
127.0.0.1) runs in a child process of its own, with its own temp dir (RAY_TMPDIR) and its own
ports, beside the test session's shared Ray (tests/conftest.py). This process never joins
it: it only talks HTTP to the Jobs API, as a user's machine would. Teardown stops exactly the
processes that child started, on success or failure.
"""

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import requests
from click.testing import CliRunner

from pipeline.submit import submit

TINY = [
    "model.hidden=[32, 32]", "pretrain.epochs=8", "admm.epochs=3", "admm.rho_every=1",
    "admm.target_compression=4", "tune.num_samples=2", "tune.grace_period=1", "tune.early_stopping=none",
    "retrain.epochs=2", "mapping.xbar_rows=16", "mapping.xbar_cols=16",
    "montecarlo.trials=4", "montecarlo.chunk_size=2",
    "montecarlo.scenarios=[{id: s0, variation: lognormal, sigma: 0.0}, {id: s1, variation: lognormal, sigma: 0.2}]",
]

# Runs in the cluster's own process: ray.cluster_utils.Cluster starts each node's processes
# (GCS, raylet, dashboard, agents) as children; closing our stdin shuts them all down.
LAUNCHER = r"""
import json, sys
from ray.cluster_utils import Cluster

spec = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, connect=False, head_node_args=spec["head"])
try:
    for node in spec["workers"]:
        cluster.add_node(**node)
    print(json.dumps({"gcs": cluster.address}), flush=True)
    sys.stdin.read()
finally:
    cluster.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop(proc: subprocess.Popen, family: list) -> None:
    """Close the launcher's stdin (clean shutdown), then SIGTERM / SIGKILL what is left of its processes."""
    import psutil

    family = family + descendants(proc.pid)
    with contextlib.suppress(Exception):
        proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    alive = []
    for p in family:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def cluster():
    """A head (dashboard, Jobs API) and a second node, 1 CPU each, on 127.0.0.1; yields the Jobs API URL."""
    tmp = tempfile.mkdtemp(prefix="rsub-")            # short: Ray's socket paths live under it
    dashboard = free_port()
    node = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 1024 ** 2,
            "min_worker_port": 0, "max_worker_port": 0}
    spec = {"head": {**node, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                     "dashboard_port": dashboard, "dashboard_agent_listen_port": free_port(),
                     "gcs_server_port": free_port()},
            # its own temp dir, as on a separate machine: nodes sharing one would share the
            # runtime_resources folder, and one node's clean-up of the job's working_dir would
            # delete the other's
            "workers": [{**node, "dashboard_agent_listen_port": free_port(), "temp_dir": os.path.join(tmp, "w1")}]}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray take 127.0.0.1 as every process's node IP:
    # otherwise the agents' and the job driver's ray.init turn 127.0.0.1 into the machine's own
    # interface address, which the nodes (bound to 127.0.0.1) do not answer on.
    env.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               RAY_DEDUP_LOGS="0")
    log = open(os.path.join(tmp, "launcher.log"), "w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp)
    family = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""   # printed once both nodes are up
        family = descendants(proc.pid)
        if not line:
            log.flush()
            pytest.fail("the test cluster did not start:\n" + open(log.name).read()[-3000:])
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while True:                                   # the Jobs API answers once the dashboard is up
            try:
                if requests.get(f"{url}/api/version", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Jobs API at {url} did not come up")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc, family)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def closed_port() -> int:
    return free_port()                                # bound and released: nothing listens there


def invoke(args):
    return CliRunner().invoke(submit, args, catch_exceptions=False)


def test_jobs_api_lists_two_alive_nodes(cluster):
    nodes = requests.get(f"{cluster}/api/v0/nodes", timeout=10).json()["data"]["result"]["result"]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    assert len(alive) == 2 and {n["node_ip"] for n in alive} == {"127.0.0.1"}


def test_submit_runs_the_pipeline_on_the_cluster(cluster, tmp_path):
    root = str(tmp_path / "results")
    args = ["--address", cluster, "--wait", "--config", "quick", "--run-id", "sub1",
            "--set", f"output.root={root}"]
    for item in TINY:
        args += ["--set", item]
    started = time.monotonic()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines() if line[:7] in ("job:   ", "run:   "))
    job_id, run_id = lines["job"].strip(), lines["run"].strip()
    assert run_id == "sub1" and job_id
    assert f"job {job_id} succeeded" in result.output
    assert "Monte-Carlo test accuracy" in result.output          # the job's log, followed by --wait

    table = lambda name: pd.read_parquet(f"{root}/tables/{name}")
    summary = table("summary")
    assert len(summary) == 1 and summary["run_id"].astype(str).item() == "sub1"
    runs = table("runs")
    assert runs["status"].tolist() == ["succeeded"] and runs["preset"].tolist() == ["quick"]
    mc = table("montecarlo")
    assert len(mc) == 2 * 4 and not mc.duplicated(["scenario_id", "trial"]).any()
    assert sorted(mc["scenario_id"].unique()) == ["s0", "s1"]

    # the job's tasks ran on both nodes (Tune's two 1-CPU trials cannot share one 1-CPU node)
    info = requests.get(f"{cluster}/api/jobs/{job_id}", timeout=10).json()
    ray_job = info["job_id"]
    nodes = set()
    for _ in range(20):                               # task events reach the GCS within a few seconds
        reply = requests.get(f"{cluster}/api/v0/tasks", timeout=10, params={
            "filter_keys": "job_id", "filter_predicates": "=", "filter_values": ray_job,
            "limit": 1000, "detail": "true"}).json()
        nodes = {t["node_id"] for t in reply["data"]["result"]["result"] if t.get("node_id")}
        if len(nodes) >= 2:
            break
        time.sleep(1)
    assert len(nodes) == 2, f"tasks ran on {nodes}"
    print(f"submit --wait took {time.monotonic() - started:.1f} s")


@pytest.fixture
def no_network(monkeypatch):
    """A name lookup (which every connection by name or address starts with) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_remote_cluster_with_local_root_is_refused_before_connecting(tmp_path, no_network):
    # .invalid never resolves, and nothing is looked up or contacted: the refusal comes first
    result = invoke(["--address", "http://cluster.invalid:8265", "--set", f"output.root={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert "cannot write to this machine's disk" in result.output and "s3://" in result.output
    assert "--shared-fs" in result.output and "Traceback" not in result.output
    result = invoke(["--address", "http://cluster.invalid:8265", "--set", f"output.root=file://{tmp_path}"])
    assert result.exit_code == 2 and "cannot write to this machine's disk" in result.output


def test_shared_fs_lifts_the_refusal_then_an_unreachable_address_exits_2(tmp_path):
    from pipeline.submit import is_loopback, place_results
    from pipeline.config import load_config

    cfg = load_config("quick", [f"output.root={tmp_path}"])
    assert place_results(cfg, "http://cluster.invalid:8265", "cluster.invalid", True).output.root == str(tmp_path)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("cluster.invalid") and not is_loopback("10.0.0.1")
    url = f"http://127.0.0.1:{closed_port()}"       # loopback only: nothing is contacted elsewhere
    started = time.monotonic()
    result = invoke(["--address", url, "--shared-fs", "--set", f"output.root={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert "cannot reach the Ray Jobs API" in result.output and url in result.output
    assert time.monotonic() - started < 15


def test_bad_config_and_bad_address_exit_2_without_connecting(tmp_path, no_network):
    result = invoke(["--address", "http://cluster.invalid:8265", "--set", "mapping.weight_bits=0"])
    assert result.exit_code == 2 and "mapping.weight_bits" in result.output
    result = invoke(["--address", "ftp://head:8265"])
    assert result.exit_code == 2 and "--address" in result.output
    result = invoke(["--address", "http://cluster.invalid:8265", "--set", "output.root=memory://x"])
    assert result.exit_code == 2 and "memory://" in result.output
