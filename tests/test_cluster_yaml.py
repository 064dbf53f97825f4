"""The Ray cluster launcher configs at the repository root are what `ray up` accepts.

`ray up` loads the YAML and calls `ray.autoscaler._private.commands._bootstrap_config`,
which runs, in order:

1. `util.prepare_config`: merges the provider's defaults.yaml shipped inside Ray
   (`fillout_defaults`), prepends `setup_commands` to the head and worker setup,
   checks the docker section, fills per-type min/max workers; for the `local`
   provider first `prepare_local`, which builds its single node type from
   head_ip / worker_ips;
2. the provider's `fillout_available_node_types_resources` (AWS: an EC2
   DescribeInstanceTypes call);
3. `util.validate_config`: jsonschema against `ray/autoscaler/ray-schema.json`
   plus Ray's cross-field checks (head type exists, sum of min_workers fits
   max_workers);
4. the provider's `bootstrap_config` (AWS: IAM, key pair, subnets, security
   group, AMI through boto3 and credentials).

Steps 1 and 3 read only the config and files inside the installed Ray, so they
run here, offline, on both files. Steps 2 and 4 are skipped for AWS (network and
credentials); for the `local` provider they are the identity, so the on-prem file
goes through `_bootstrap_config` itself. Nothing here opens a connection.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
FILES = [AWS, ONPREM]
MOUNT = "~/memristor-admm"
RAY_REQUIREMENT = next(
    Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    if Requirement(d).name == "ray"
)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_prepare_and_validate(raw: dict) -> dict:
    """What `ray up` does to the config before it talks to the provider."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def worker_types(cfg: dict) -> dict:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def node_type_problems(cfg: dict) -> list[str]:
    """Checks Ray leaves to run time: per-type bounds and the global worker cap."""
    problems = []
    for name, t in cfg["available_node_types"].items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", 0)
        if not 0 <= lo <= hi:
            problems.append(f"{name}: min_workers {lo} > max_workers {hi}")
    if cfg["provider"]["type"] != "local":  # local: the head and workers share one node type
        total = sum(t.get("max_workers", 0) for t in worker_types(cfg).values())
        if cfg["max_workers"] < total:
            problems.append(f"max_workers {cfg['max_workers']} < sum of worker max_workers {total}")
    return problems


def normalize(cmd: str) -> str:
    return cmd.replace("$HOME", "~").replace("${HOME}", "~")


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.name)
def raw(request) -> dict:
    return load(request.param)


# ---------------------------------------------------------------- both files


def test_ray_prepares_and_validates(raw):
    prepared = ray_prepare_and_validate(raw)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert node_type_problems(prepared) == []
    # The head's autoscaler prepares and validates the bootstrapped config again.
    validate_config(prepare_config(copy.deepcopy(prepared)))


def test_every_section_is_set_explicitly(raw):
    """Nothing important is left to Ray's provider defaults (AWS's would install a Ray nightly)."""
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "provider", "auth",
                "file_mounts", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in raw, key
    assert raw["auth"].get("ssh_user")


def test_file_mounts_copy_the_repository(raw):
    mounts = raw["file_mounts"]
    assert MOUNT in mounts
    # `ray up` resolves the local side against its working directory: the repository root.
    local = (ROOT / mounts[MOUNT]).resolve()
    assert local == ROOT
    project = tomllib.loads((local / "pyproject.toml").read_text())["project"]
    assert project["name"] == "memristor-admm"
    assert ".gitignore" in raw.get("rsync_filter", [])


def test_setup_installs_this_package_from_the_mount(raw):
    prepared = ray_prepare_and_validate(raw)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = [normalize(c) for c in prepared[key]]
        installs = [c for c in cmds if re.search(r"pip install .*-e ['\"]?" + re.escape(MOUNT), c)]
        assert installs, f"{key} never runs pip install -e {MOUNT}: {cmds}"
        for wanted in re.findall(re.escape(MOUNT) + r"\[([^\]]+)\]", installs[-1]):
            for extra in wanted.split(","):
                assert extra.strip() in extras, f"extra [{extra}] is not in pyproject.toml"
        # Ray is pinned to one release (launcher and cluster must match), installed before the
        # package, and the pin satisfies the package's own Ray requirement.
        pin_at = [i for i, c in enumerate(cmds) if re.search(r"ray\[[^\]]*\]==[0-9]", c)]
        assert pin_at, f"{key} does not pin Ray"
        assert pin_at[0] < cmds.index(installs[-1])
        pin = re.search(r"ray\[[^\]]*\]==([0-9][0-9.]*[0-9])", cmds[pin_at[0]]).group(1)
        assert RAY_REQUIREMENT.specifier.contains(pin), (pin, str(RAY_REQUIREMENT))


def test_start_commands_start_ray(raw):
    prepared = ray_prepare_and_validate(raw)
    head = " ".join(prepared["head_start_ray_commands"])
    worker = " ".join(prepared["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


def test_results_storage_is_documented(raw, request):
    text = request.node.callspec.params["raw"].read_text()
    assert "output.root" in text


# ---------------------------------------------------------------- AWS


def test_aws_node_types():
    cfg = ray_prepare_and_validate(load(AWS))
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["node_config"]["InstanceType"]
    assert head["max_workers"] == 0
    assert "IamInstanceProfile" in head["node_config"]

    workers = worker_types(cfg)
    cpu = [t for t in workers.values() if t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU")]
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert cpu and gpu, workers
    for t in workers.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1  # autoscaling from zero
        assert "IamInstanceProfile" in t["node_config"]  # workers write to S3 too
    assert cfg["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    assert cfg["idle_timeout_minutes"] > 0


def test_aws_gpu_type_matches_its_instance():
    cfg = load(AWS)
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["resources"]["GPU"] == 1
    assert gpu["resources"].get("accelerator_type:A10G") == 1


def test_aws_installs_the_aws_extra():
    cfg = ray_prepare_and_validate(load(AWS))
    assert any("[aws]" in c for c in cfg["head_setup_commands"])  # boto3 for the head's autoscaler
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"boto3", "s3fs"} <= {re.split(r"[<>=!~\[ ]", d)[0] for d in extras["aws"]}


# ---------------------------------------------------------------- on-prem


def test_onprem_goes_through_ray_up_bootstrap():
    """For the local provider every step of `ray up`'s _bootstrap_config is offline."""
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = load(ONPREM)
    boot = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    boot["provider"].pop("_config_cache_path", None)
    assert boot == ray_prepare_and_validate(raw)


def test_onprem_hosts_and_gpu_detection():
    raw = load(ONPREM)
    provider = raw["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    cfg = ray_prepare_and_validate(raw)
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(provider["worker_ips"])
    # GPUs are left to `ray start`'s detection: nothing forces a count.
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "--num-gpus" not in cmd and "--resources" not in cmd


# ---------------------------------------------------------------- broken copies fail


def test_unknown_top_level_key_fails(raw):
    broken = copy.deepcopy(raw)
    broken["max_worker"] = 3  # typo
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        ray_prepare_and_validate(broken)


def test_non_integer_gpu_count_fails():
    broken = load(AWS)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        ray_prepare_and_validate(broken)


def test_min_workers_beyond_global_max_fails():
    broken = load(AWS)
    broken["available_node_types"]["cpu_worker"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        ray_prepare_and_validate(broken)


def test_unknown_head_node_type_fails():
    broken = load(AWS)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_prepare_and_validate(broken)


def test_min_above_max_in_one_type_is_caught():
    broken = load(AWS)
    broken["available_node_types"]["gpu_worker"].update(min_workers=3, max_workers=1)
    # Ray's validation accepts it (sum of mins <= global max); our check does not.
    prepared = ray_prepare_and_validate(broken)
    assert any("gpu_worker" in p for p in node_type_problems(prepared))


def test_global_max_below_type_maxima_is_caught():
    broken = load(AWS)
    broken["max_workers"] = 2
    assert any("max_workers 2" in p for p in node_type_problems(ray_prepare_and_validate(broken)))


def test_onprem_with_node_types_fails():
    """The local provider builds its own node type; `ray up` refuses a file that declares some."""
    import click

    broken = load(ONPREM)
    broken["available_node_types"] = copy.deepcopy(load(AWS)["available_node_types"])
    broken["head_node_type"] = "head"
    with pytest.raises(click.ClickException):
        ray_prepare_and_validate(broken)
