"""The whole pipeline on Ray with tiny settings: the tables and their invariants."""

import json

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
    "model.hidden=[32, 32]", "pretrain.epochs=8", "admm.epochs=3", "admm.rho_every=1",
    "admm.target_compression=4", "tune.num_samples=2", "tune.grace_period=1",
    "retrain.epochs=2", "mapping.xbar_rows=16", "mapping.xbar_cols=16",
    "montecarlo.trials=4", "montecarlo.chunk_size=3",
    "montecarlo.scenarios=[{id: s0, variation: lognormal, sigma: 0.0}, "
    "{id: s1, variation: lognormal, sigma: 0.2}, {id: saf, p_sa0: 0.02, p_sa1: 0.02}]",
]


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("results"))
    args = ["run", "--run-id", "tiny", "--quiet", "--set", f"output.root={root}"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_every_table_reads_with_pandas_and_matches_its_schema(run):
    root, _ = run
    for table in TABLES:
        frame = pd.read_parquet(f"{root}/tables/{table}")
        assert list(frame["run_id"].astype(str).unique()) == ["tiny"]
        assert set(SCHEMAS[table].names) <= set(frame.columns), table


def test_one_row_per_rules(run):
    root, _ = run
    t = lambda name: pd.read_parquet(f"{root}/tables/{name}")
    assert len(t("runs")) == 1 and t("runs")["status"].item() == "succeeded"
    assert len(t("summary")) == 1
    acc = t("accuracy")
    assert sorted(acc["stage"].unique()) == ["admm", "mapped", "pretrain", "retrain"]
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
    s = pd.read_parquet(f"{root}/tables/summary").iloc[0]
    assert 0 < s["crossbars_compressed"] < s["crossbars_dense"]
    assert 0 < s["power_reduction"] < 1 and 0 < s["area_reduction"] < 1
    for key in ("baseline_accuracy", "final_accuracy"):
        assert 0 <= s[key] <= 1
    assert s["weight_compression"] > 1
    hardware = pd.read_parquet(f"{root}/tables/hardware")
    dense = hardware[hardware.variant == "dense"]["power_mw"].sum()
    assert s["power_dense_mw"] == pytest.approx(dense)
    assert [m["scenario_id"] for m in s["montecarlo"]] == ["s0", "s1", "saf"]
    assert "weight compression" in output and "mW" in output


def test_noise_free_scenario_reproduces_mapped_accuracy_and_seeds_rerun(run):
    root, _ = run
    mc = pd.read_parquet(f"{root}/tables/montecarlo")
    acc = pd.read_parquet(f"{root}/tables/accuracy")
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
    assert set(manifest["stages"]) == {"pretrain", "admm", "map", "retrain", "montecarlo", "tables"}
    result = CliRunner().invoke(main, ["query", root, "--table", "montecarlo", "--where", "sigma > 0",
                                       "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 4 and all(r["sigma"] == 0.2 for r in rows)


def test_user_errors_exit_2_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--set", "mapping.weight_bits=0"])
    assert result.exit_code == 2 and "mapping.weight_bits" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["query", str(tmp_path), "--table", "summary"])
    assert result.exit_code == 2 and "memadmm run" in result.output
    result = runner.invoke(main, ["run", "--set", "admm.layers={fc9: {filter: 0.5}}"])
    assert result.exit_code == 2 and "fc9" in result.output
