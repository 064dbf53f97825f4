"""`memadmm submit`: send a run to a Ray cluster through the Ray Jobs API.

    memadmm submit --address http://HEAD:8265 [--config PRESET|FILE] [--set k=v ...] [--run-id ID]
                   [--wait] [--shared-fs] [--working-dir/--no-working-dir]

Everything that can be refused is refused here, on this machine, before anything is sent:
the config (same checks and one-line messages as `memadmm run`), the address, and a results
root the cluster could not write to. Then:

* **How the config travels.** The config is resolved and validated here (preset or file,
  `--set` overrides applied, a relative local `output.root` / `data.root` made absolute) and
  its YAML goes to the job in the runtime environment variable `MEMADMM_CONFIG_YAML`. The
  job's entrypoint, `python -c "from pipeline.submit import job_driver; job_driver()" ...`,
  validates it again and runs the pipeline exactly as `memadmm run` does (same summary,
  same `runs.preset` column: the preset name or the file name as given). So a config file
  never has to exist on the cluster, and the cluster runs the config that was checked here,
  not its own copy of a preset.
* **How the code travels.** By default the repository holding the `pipeline` package is
  uploaded as the job's `working_dir` (without .git, results, caches); the job's driver,
  tasks and Tune trials import it from there. `--no-working-dir` uploads nothing, for
  clusters whose nodes have memristor-admm installed (cluster.yaml's setup commands).
* **Where the tables go.** The tables are written by the cluster's nodes, not by this
  machine. A cluster whose address is not loopback (127.0.0.0/8, ::1, localhost) is
  remote, and a local results root (a plain path or file://) is refused for it unless
  `--shared-fs` says that path is a shared file system mounted at the same place on every
  node; use an object store (`--set output.root=s3://BUCKET/PATH`, `gs://...`) otherwise.
  `memory://` is refused always: it would live in the job's processes and end with them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import click

from pipeline.environ import environment
from pipeline.errors import UserError, run_options, user_errors

CONFIG_ENV = "MEMADMM_CONFIG_YAML"
CONNECT_TIMEOUT_S = 10
POLL_S = 1.0
UPLOAD_EXCLUDES = [".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "/.benchmarks", "/results",
                   "/runs", "/.venv", "/venv", "/build", "/dist", "/.whl", "/.gl"]
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


# ---- checks (no network) -----------------------------------------------------------------

def parse_address(address: str) -> tuple[str, str]:
    """The Jobs API URL (no trailing slash) and its host; a bare HOST:PORT gets http://."""
    text = address.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        host = None
    else:
        host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise UserError(f"--address: got {address!r}; allowed: the HTTP address of the Ray "
                        "dashboard (Jobs API) on the head node, e.g. http://HEAD:8265")
    return text.rstrip("/"), host


def is_loopback(host: str) -> bool:
    """True for localhost names and 127.0.0.0/8, ::1 (also IPv4-mapped); no name lookup."""
    name = host.strip("[]").rstrip(".").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _local_path(root: str) -> str | None:
    """The path of a results root on a local disk (plain path, file://, local://), else None."""
    target = root.split("::")[-1]                    # fsspec chains: the last one is the store
    if "://" not in target:
        return target
    scheme, _, rest = target.partition("://")
    return rest if scheme.lower() in ("file", "local") else None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def place_results(cfg, url: str, host: str, shared_fs: bool):
    """The config with local roots made absolute; UserError for a root the cluster cannot use."""
    from pipeline.config import validate

    root = cfg.output.root
    if root.split("::")[-1].lower().startswith("memory://"):
        raise UserError(f"output.root: got {root!r}; a memory:// root lives in the memory of the job's "
                        "processes and is gone when the job ends; allowed for submit: an object store "
                        "(s3://..., gs://...) or a path the cluster's nodes share")
    same_disk = is_loopback(host) or shared_fs       # the nodes see this machine's paths
    data = cfg.model_dump(mode="json")
    path = _local_path(root)
    if path is not None:                             # else an object store: every node writes there
        if not same_disk:
            raise UserError(
                f"output.root: got {root!r}, a path on this machine's disk, but the cluster at {url} is "
                "remote and its nodes cannot write to this machine's disk. Use an object store every "
                "node can write, e.g. --set output.root=s3://BUCKET/PATH or gs://BUCKET/PATH, or pass "
                "--shared-fs if this path is a shared file system mounted at the same place on every "
                "node (and here)")
        absolute = _absolute(path)                   # the job's working directory is not ours
        data["output"]["root"] = absolute if root == path else root.replace(path, absolute, 1)
    if same_disk and data["data"].get("root") and "://" not in data["data"]["root"]:
        data["data"]["root"] = _absolute(data["data"]["root"])
    return validate(data)


def repository_root() -> Path:
    """The folder holding the `pipeline` package (and `stages`, `hardware`): what is uploaded."""
    return Path(__file__).resolve().parent.parent      # pipeline/ is a namespace package: no __init__


def entrypoint(run_id: str, preset: str) -> str:
    args = ["python", "-c", "from pipeline.submit import job_driver; job_driver()",
            "--run-id", run_id, "--preset", preset, "--quiet"]
    return shlex.join(args)


def runtime_env(cfg, working_dir: bool) -> dict:
    env: dict = {"env_vars": {CONFIG_ENV: cfg.to_yaml()}}
    if working_dir:
        repo = repository_root()
        excludes = list(UPLOAD_EXCLUDES)
        for local in (_local_path(cfg.output.root), cfg.data.root):
            if local and "://" not in local:
                with contextlib.suppress(ValueError):
                    inside = Path(_absolute(local)).relative_to(repo)
                    if inside.parts:
                        excludes.append(f"/{inside.as_posix()}")
        env["working_dir"] = str(repo)
        env["excludes"] = excludes
    return env


# ---- the cluster -------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_ray_upload():
    """Ray logs each file it leaves out of the upload at INFO, and that .git is left out: keep warnings only."""
    names = {"ray": logging.WARNING, "ray._private.runtime_env.working_dir": logging.ERROR}
    saved = {name: logging.getLogger(name).level for name in names}
    for name, level in names.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def connect(url: str):
    """A JobSubmissionClient for url; UserError, within CONNECT_TIMEOUT_S, when nothing answers."""
    import requests

    try:
        requests.get(f"{url}/api/version", timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as exc:
        raise UserError(f"--address: cannot reach the Ray Jobs API at {url} ({type(exc).__name__}); "
                        "is the cluster up, and is its dashboard port (default 8265) reachable from "
                        "here (e.g. through `ray dashboard cluster.yaml`)?") from None
    from ray.job_submission import JobSubmissionClient

    try:
        # JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override its address: not here
        with environment(RAY_ADDRESS=None, RAY_API_SERVER_ADDRESS=None):
            return JobSubmissionClient(url)
    except Exception as exc:  # ConnectionError, version or authentication errors, HTTP errors
        raise UserError(f"--address: the Ray Jobs API at {url} refused the connection: {exc}") from None


def follow(client, job_id: str) -> str:
    """Print the job's log as it grows until the job ends; returns its final status."""
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            click.echo(logs[printed:], nl=False)
            printed = len(logs)
        if status.is_terminal():
            logs = client.get_job_logs(job_id)       # what was written before the end
            if len(logs) > printed:
                click.echo(logs[printed:], nl=False)
            return status
        time.sleep(POLL_S)


# ---- commands ----------------------------------------------------------------------------

@click.command("submit")
@click.option("--address", required=True, metavar="URL",
              help="Ray Jobs API of the cluster: the head node's dashboard, e.g. http://HEAD:8265")
@run_options
@click.option("--wait", is_flag=True, help="follow the job's log until it ends; exit 0 only if it succeeded")
@click.option("--shared-fs", is_flag=True,
              help="output.root is a path on a shared file system mounted at the same place on every "
                   "node: allow it for a remote cluster")
@click.option("--working-dir/--no-working-dir", default=True, show_default=True,
              help="upload this repository as the job's working_dir; --no-working-dir when the "
                   "cluster's nodes have memristor-admm installed")
@user_errors
def submit(address, source, overrides, run_id, wait, shared_fs, working_dir) -> None:
    """Send a run to a Ray cluster as a Ray job; the cluster writes its tables under output.root."""
    from pipeline.config import load_config
    from pipeline.run import new_run_id

    cfg = load_config(source, overrides)                  # refused here, before anything is sent
    url, host = parse_address(address)
    cfg = place_results(cfg, url, host, shared_fs)        # before any connection
    run_id = run_id or new_run_id()
    env = runtime_env(cfg, working_dir)
    client = connect(url)
    try:
        with _quiet_ray_upload():
            job_id = client.submit_job(entrypoint=entrypoint(run_id, source), runtime_env=env,
                                       metadata={"memadmm_run_id": run_id})
    except Exception as exc:  # upload or submission refused by the cluster
        raise UserError(f"submit: the cluster at {url} did not accept the job: {exc}") from None
    root = cfg.output.root.rstrip("/")
    click.echo(f"job:    {job_id}")
    click.echo(f"run:    {run_id}")
    click.echo(f"tables: {root}/tables/<table>/run_id={run_id}/  (written by the cluster)")
    if not wait:
        click.echo(f"follow: ray job logs --address {url} --follow {job_id}")
        return
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job goes on (ray job stop --address {url} {job_id})", err=True)
        sys.exit(130)
    from ray.job_submission import JobStatus

    if status == JobStatus.SUCCEEDED:
        click.echo(f"job {job_id} succeeded: run {run_id}")
        return
    message = client.get_job_info(job_id).message or ""
    click.echo(f"error: job {job_id} {status.value}" + (f": {message}" if message else ""), err=True)
    sys.exit(1)


@click.command("submit-driver", hidden=True)
@click.option("--run-id", required=True)
@click.option("--preset", default="", help="what --config said on the submitting machine")
@click.option("--quiet", is_flag=True)
@user_errors
def job_driver(run_id, preset, quiet) -> None:
    """The job's entrypoint on the cluster: `memadmm run` on the config sent in MEMADMM_CONFIG_YAML."""
    import yaml

    from pipeline.cli import print_summary
    from pipeline.config import validate

    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise UserError(f"{CONFIG_ENV} is not set: this command is the entrypoint of a job sent by "
                        "`memadmm submit`")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"{CONFIG_ENV}: not a mapping of config sections")
    cfg = validate(data)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from pipeline.run import run_pipeline

    summary = run_pipeline(cfg, run_id=run_id, preset=preset)   # joins the job's cluster (RAY_ADDRESS)
    print_summary(summary, cfg.output.root)


if __name__ == "__main__":
    submit()
