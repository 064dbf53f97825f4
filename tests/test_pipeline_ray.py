"""The whole pipeline on Ray with tiny settings: the tables and their invariants."""

import glob
import json
import os

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.tables import SCHEMAS, TABLES
from stages.mapping import MappedNetwork
from stages.montecarlo import Scenario, run_trials
from pipeline import steps

TINY = [
    "tune.early_stopping=none", "admm.compare_magnitude=true", "model.hidden=[32, 32]", "pretrain.epochs=8", "admm.epochs=3", "admm.rho_every=1",
    "admm.target_compression=4", "tune.num_samples=2", "tune.grace_period=1",
    "retrain.epochs=2", "mapping.xbar_rows=16", "mapping.xbar_cols=16",
    "montecarlo.trials=4", "montecarlo.chunk_size=3",
    "montecarlo.scenarios=[{id: s0, variation: lognormal, sigma: 0.0}, "
    "{id: s1, variation: lognormal, sigma: 0.2}, {id: saf, p_sa0: 0.02, p_sa1: 0.02}]",
]


def tiny(root: str, table: str) -> pd.DataFrame:
    frame = pd.read_parquet(f"{root}/tables/{table}")
    return frame[frame.run_id == "tiny"].reset_index(drop=True)


def invoke_run(root: str, run_id: str, extra=()):
    args = ["run", "--run-id", run_id, "--quiet", "--set", f"output.root={root}"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("results"))
    return root, invoke_run(root, "tiny")


def test_a_fixed_seed_gives_the_same_tables(run, tmp_path):
    root, _ = run
    invoke_run(str(tmp_path), "tiny-again")     # a fresh root: nothing cached, everything recomputed
    manifest = json.load(open(f"{tmp_path}/runs/tiny-again/manifest.json"))
    assert {s["status"] for s in manifest["stages"].values()} == {"succeeded"}
    for table, keys in (("montecarlo", ["scenario_id", "trial"]), ("accuracy", ["stage", "split"]),
                        ("layers", ["variant", "layer"]), ("summary", [])):
        a = pd.read_parquet(f"{root}/tables/{table}/run_id=tiny")
        b = pd.read_parquet(f"{tmp_path}/tables/{table}/run_id=tiny-again")
        if keys:
            a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)


def test_every_table_reads_with_pandas_and_matches_its_schema(run):
    root, _ = run
    for table in TABLES:
        frame = pd.read_parquet(f"{root}/tables/{table}")
        assert "tiny" in set(frame["run_id"].astype(str))
        assert set(SCHEMAS[table].names) <= set(frame.columns), table


def test_one_row_per_rules(run):
    root, _ = run
    t = lambda name: tiny(root, name)
    assert len(t("runs")) == 1 and t("runs")["status"].item() == "succeeded"
    assert len(t("summary")) == 1
    acc = t("accuracy")
    assert sorted(acc["stage"].unique()) == ["admm", "magnitude", "magnitude-mapped", "magnitude-retrain",
                                             "mapped", "pretrain", "retrain"]
    assert not acc.duplicated(["stage", "split"]).any()
    layers = t("layers")
    assert set(layers["variant"]) == {"dense", "compressed"} and len(layers) == 2 * 3
    mc = t("montecarlo")
    assert len(mc) == 3 * 4 and not mc.duplicated(["scenario_id", "trial"]).any()
    tune = t("tune")
    assert tune["trial_id"].nunique() == 2
    assert len(tune) == 2 * tune["layer"].nunique()      # a row per trial and layer
    assert tune.groupby("trial_id")["chosen"].first().sum() == 1
    assert {"rho", "filter_ratio", "shape_ratio"} <= set(tune.columns)


def test_summary_invariants(run):
    root, output = run
    s = tiny(root, "summary").iloc[0]
    assert 0 < s["crossbars_compressed"] < s["crossbars_dense"]
    assert 0 < s["power_reduction"] < 1 and 0 < s["area_reduction"] < 1
    for key in ("baseline_accuracy", "final_accuracy"):
        assert 0 <= s[key] <= 1
    assert s["weight_compression"] > 1
    assert s["admm_gain"] == pytest.approx(s["final_accuracy"] - s["magnitude_accuracy"])
    hardware = tiny(root, "hardware")
    dense = hardware[hardware.variant == "dense"]["power_mw"].sum()
    assert s["power_dense_mw"] == pytest.approx(dense)
    assert [m["scenario_id"] for m in s["montecarlo"]] == ["s0", "s1", "saf"]
    assert "weight compression" in output and "mW" in output


def test_noise_free_scenario_reproduces_mapped_accuracy_and_seeds_rerun(run):
    root, _ = run
    mc = tiny(root, "montecarlo")
    acc = tiny(root, "accuracy")
    retrained = acc[(acc.stage == "retrain") & (acc.split == "test")]["accuracy"].item()
    assert (mc[mc.scenario_id == "s0"]["accuracy"] == retrained).all()
    # re-run one noisy trial alone from its stored seed, from the stored artifact
    row = mc[mc.scenario_id == "s1"].iloc[2]
    plain = torch.load(f"{root}/runs/tiny/artifacts/retrain.pt", map_location="cpu", weights_only=True)
    cfg = load_config(f"{root}/runs/tiny/config.yaml")
    data = steps.data_for(cfg)
    again = run_trials(steps.template_for(cfg, data), MappedNetwork.from_plain(plain), steps.spec_for(cfg),
                       Scenario("s1", "lognormal", 0.2), [int(row["seed"])], data.x_test, data.y_test)
    assert again == [row["accuracy"]]


def test_manifest_and_query(run):
    root, _ = run
    manifest = json.load(open(f"{root}/runs/tiny/manifest.json"))
    assert manifest["status"] == "succeeded"
    assert set(manifest["stages"]) == {"pretrain", "admm", "map", "retrain", "magnitude",
                                         "montecarlo", "tables"}
    result = CliRunner().invoke(main, ["query", root, "--table", "montecarlo", "--run-id", "tiny", "--where", "sigma > 0",
                                       "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 4 and all(r["sigma"] == 0.2 for r in rows)


def test_the_trials_keep_tunes_csv_and_json_logs_but_no_tensorboard_files(run):
    root, _ = run
    trials = glob.glob(f"{root}/runs/tiny/tune/admm-tiny/*/")
    assert trials, os.listdir(f"{root}/runs/tiny/tune")
    for folder in trials:
        files = os.listdir(folder)
        assert {"progress.csv", "result.json"} <= set(files), files
        assert not [f for f in files if f.startswith("events.out.tfevents")], files


def test_environment_sets_and_unsets_variables_inside_the_block_only(monkeypatch):
    from pipeline.environ import environment
    monkeypatch.setenv("MEMADMM_T_SET", "before")
    monkeypatch.setenv("MEMADMM_T_UNSET", "kept")
    monkeypatch.delenv("MEMADMM_T_NEW", raising=False)
    with environment(MEMADMM_T_SET="1", MEMADMM_T_UNSET=None, MEMADMM_T_NEW="x"):
        assert os.environ["MEMADMM_T_SET"] == "1" and os.environ["MEMADMM_T_NEW"] == "x"
        assert "MEMADMM_T_UNSET" not in os.environ
    assert os.environ["MEMADMM_T_SET"] == "before" and os.environ["MEMADMM_T_UNSET"] == "kept"
    assert "MEMADMM_T_NEW" not in os.environ


def test_user_errors_exit_2_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--set", "mapping.weight_bits=0"])
    assert result.exit_code == 2 and "mapping.weight_bits" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["query", str(tmp_path), "--table", "summary"])
    assert result.exit_code == 2 and "memadmm run" in result.output
    result = runner.invoke(main, ["run", "--set", "admm.layers={fc9: {filter: 0.5}}"])
    assert result.exit_code == 2 and "fc9" in result.output


def test_rerunning_a_run_id_reuses_every_stage_and_gives_the_same_tables(run):
    root, _ = run
    before = {t: pd.read_parquet(f"{root}/tables/{t}/run_id=tiny") for t in ("montecarlo", "summary", "accuracy")}
    invoke_run(root, "tiny")
    manifest = json.load(open(f"{root}/runs/tiny/manifest.json"))
    assert all(manifest["stages"][s]["status"] == "cached"
               for s in ("pretrain", "admm", "map", "retrain", "magnitude", "montecarlo"))
    for table, frame in before.items():
        pd.testing.assert_frame_equal(frame, pd.read_parquet(f"{root}/tables/{table}/run_id=tiny"))


BAD_INPUTS = [   # (arguments after the command, what the message must name)
    (["run", "--set", "admm.epochs=abc"], ["admm.epochs", "abc"]),
    (["run", "--set", "admm.layers.fc1.filter=1.5"], ["admm.layers.fc1.filter", "1.5"]),
    (["run", "--set", "mapping.g_min_us=200"], ["g_min_us", "200"]),
    (["run", "--set", "mapping.weight_bits=0"], ["mapping.weight_bits", "0"]),
    (["run", "--set", "mapping.cell_bits=-1"], ["mapping.cell_bits", "-1"]),
    (["run", "--set", "hardware.baseline_weight_bits=1"], ["hardware.baseline_weight_bits", "1"]),
    (["run", "--set", "model.name=alexnet"], ["model.name", "alexnet"]),
    (["run", "--set", "data.name=imagenet"], ["data.name", "imagenet"]),
    (["run", "--set", "data.name=mnist", "--set", "model.name=lenet5", "--set", "admm.layers={}",
      "--set", "tune.ratios={}", "--set", "data.root=/nonexistent/mnist"], ["data.root", "/nonexistent/mnist", "download"]),
    (["run", "--set", "model.name=vgg16", "--set", "admm.layers={}", "--set", "tune.ratios={}"], ["model.name", "vgg16"]),
    (["run", "--set", "admm.layers={fc9: {filter: 0.5}}"], ["admm.layers.fc9", "fc1"]),
    (["run", "--set", "admm.layers={fc3: {filter: 0.5}}"], ["admm.layers.fc3.filter", "0.5"]),
    (["run", "--set", "tune.ratios={fc1: {filter: [0.9, 0.1]}}"], ["tune", "0.9"]),
    (["run", "--set", "montecarlo.scenarios=[{id: a, p_sa0: 1.5}]"], ["p_sa0", "1.5"]),
    (["run", "--set", "montecarlo.scenarios=[{id: a, p_sa0: 0.6, p_sa1: 0.6}]"], ["p_sa0 + p_sa1", "1.2"]),
    (["run", "--set", "montecarlo.scenarios=[{id: a}, {id: a}]"], ["scenario ids", "a"]),
    (["run", "--set", "montecarlo.scenarios=[{id: a, sigma: -0.1, variation: lognormal}]"], ["sigma", "-0.1"]),
    (["run", "--set", "retrain.noise_sigma=0.2"], ["noise_variation", "0.2"]),
    (["run", "--set", "mapping.progressive_fractions=[0.9, 0.5]"], ["progressive_fractions", "0.9"]),
    (["run", "--set", "seed=-3"], ["seed", "-3"]),
    (["run", "--set", "data.unknown=1"], ["data.unknown", "unknown field"]),
    (["run", "--set", "admm.epochs"], ["--set", "KEY=VALUE"]),
    (["run", "--config", "no-such-preset"], ["no-such-preset", "quick"]),
    (["run", "--config", "/nonexistent/config.yaml"], ["/nonexistent/config.yaml"]),
    (["run", "--address", "127.0.0.1:1"], ["--address", "127.0.0.1:1"]),
    (["estimate", "--model", "lenet5", "--compression", "0.5", "--no-write"], ["--compression", "0.5"]),
]


@pytest.mark.parametrize("command, named", BAD_INPUTS, ids=[" ".join(a[1:3]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_naming_field_and_value_and_leaves_earlier_runs_alone(run, command, named, tmp_path):
    root, _ = run
    before = {p: open(p, "rb").read() for p in glob.glob(f"{root}/**/*", recursive=True) if os.path.isfile(p)}
    result = CliRunner().invoke(main, [*command, "--set", f"output.root={root}"] if command[0] == "run" else command)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for text in named:
        assert text in result.output, (text, result.output)
    after = {p: open(p, "rb").read() for p in glob.glob(f"{root}/**/*", recursive=True) if os.path.isfile(p)}
    assert after == before


def test_an_unwritable_root_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["run", "--set", f"output.root={blocker}/results"])
    assert result.exit_code == 2 and "output.root" in result.output and str(blocker) in result.output


def test_a_real_process_prints_one_line_and_no_traceback():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--set", "mapping.weight_bits=0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "mapping.weight_bits" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_an_fsspec_memory_root_holds_every_table(ray_session):
    invoke_run("memory://memadmm-test", "mem")
    for table in TABLES:
        frame = pd.read_parquet(f"memory://memadmm-test/tables/{table}")
        assert len(frame) > 0 and set(frame["run_id"].astype(str)) == {"mem"}


def test_a_local_ray_started_by_a_run_preloads_the_stage_modules_in_its_workers():
    """connect() starts the local cluster with pipeline.run.local_ray_system_config: a worker has
    imported the stage and Tune modules before its first task (which imports neither)."""
    import subprocess
    import sys
    script = (
        "import os, sys, ray\n"
        "os.environ.update(RAY_AUTH_MODE='disabled', RAY_USAGE_STATS_ENABLED='0')\n"
        "from pipeline.config import load_config\n"
        "from pipeline.run import WORKER_PRELOAD, connect\n"
        "connect(load_config('quick', ['resources.num_cpus=1']), None)\n"
        "loaded = ray.get(ray.remote(lambda: sorted(m for m in WORKER_PRELOAD if m in sys.modules)).remote())\n"
        "print(loaded == sorted(WORKER_PRELOAD), ray.cluster_resources()['CPU'])\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.stdout.split() == ["True", "1.0"], done.stderr[-2000:]
