"""The Parquet tables: explicit Arrow schemas, hive-partitioned by run_id, atomic writes.

    <root>/tables/<table>/run_id=<run_id>/part-<id>.parquet

`run_id` lives in the partition path, not in the files, so
`pandas.read_parquet("<root>/tables/<table>")` reads every run at once with
a run_id column. A write never changes a file in place: it writes a file
with a fresh name into a hidden staging folder (names starting with "_" are
skipped by readers), then moves the old partition folder aside, moves the
staging folder in, and deletes the old one. A reader sees the old partition,
the new one, or (for an instant) none, never half of one: replacing a file
in place is not enough, because pyarrow's dataset reader opens a path twice
(footer, then pages) and can pair one version's footer with the other's
pages. Moves are atomic on local and POSIX shared file systems; on object
stores each file is written whole.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Iterable

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError

SCHEMA_VERSION = "1"

_MC_STATS = pa.struct([
    ("scenario_id", pa.string()), ("variation", pa.string()), ("sigma", pa.float64()),
    ("p_sa0", pa.float64()), ("p_sa1", pa.float64()), ("read_noise", pa.float64()),
    ("drift_nu", pa.float64()), ("adc_bits", pa.int64()), ("trials", pa.int64()),
    ("mean", pa.float64()), ("std", pa.float64()), ("p5", pa.float64()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("created_at", pa.timestamp("us", tz="UTC")), ("status", pa.string()),
        ("seed", pa.int64()), ("config_hash", pa.string()), ("config", pa.string()),
        ("package_versions", pa.string()), ("preset", pa.string()),
    ]),
    "accuracy": pa.schema([
        ("stage", pa.string()), ("split", pa.string()), ("accuracy", pa.float64()),
        ("n_samples", pa.int64()),
    ]),
    "layers": pa.schema([
        ("variant", pa.string()), ("layer", pa.string()), ("layer_type", pa.string()),
        ("weight_shape", pa.list_(pa.int64())), ("gemm_out", pa.int64()), ("gemm_in", pa.int64()),
        ("kept_out", pa.int64()), ("kept_in_own", pa.int64()), ("kept_in", pa.int64()),
        ("weights", pa.int64()), ("nonzeros", pa.int64()), ("weight_bits", pa.int64()),
        ("cell_bits", pa.int64()), ("slices", pa.int64()), ("polarity", pa.int64()),
        ("xbar_rows", pa.int64()), ("xbar_cols", pa.int64()), ("tiles", pa.int64()),
        ("crossbars", pa.int64()),
    ]),
    "hardware": pa.schema([
        ("variant", pa.string()), ("layer", pa.string()), ("component", pa.string()),
        ("scope", pa.string()), ("count", pa.float64()), ("power_mw", pa.float64()),
        ("area_mm2", pa.float64()), ("preset", pa.string()), ("source", pa.string()),
    ]),
    "tune": pa.schema([
        ("trial_id", pa.string()), ("layer", pa.string()), ("rho", pa.float64()),
        ("filter_ratio", pa.float64()), ("shape_ratio", pa.float64()),
        ("block_ratio", pa.float64()), ("irregular_ratio", pa.float64()), ("status", pa.string()), ("epochs", pa.int64()),
        ("val_accuracy", pa.float64()), ("weight_compression", pa.float64()),
        ("crossbars", pa.int64()), ("meets_target", pa.bool_()), ("score", pa.float64()),
        ("chosen", pa.bool_()),
    ]),
    "montecarlo": pa.schema([
        ("scenario_id", pa.string()), ("variation", pa.string()), ("sigma", pa.float64()),
        ("p_sa0", pa.float64()), ("p_sa1", pa.float64()), ("read_noise", pa.float64()),
        ("drift_nu", pa.float64()), ("drift_nu_std", pa.float64()), ("drift_t_s", pa.float64()),
        ("drift_t0_s", pa.float64()), ("tiles", pa.bool_()), ("adc_bits", pa.int64()),
        ("dac_bits", pa.int64()), ("mapping_mode", pa.string()), ("trial", pa.int64()),
        ("seed", pa.int64()), ("accuracy", pa.float64()), ("n_samples", pa.int64()),
        ("device", pa.string()),
    ]),
    "summary": pa.schema([
        ("model", pa.string()), ("dataset", pa.string()), ("method", pa.string()),
        ("baseline_accuracy", pa.float64()), ("final_accuracy", pa.float64()),
        ("accuracy_loss", pa.float64()),
        ("magnitude_accuracy", pa.float64()), ("admm_gain", pa.float64()), ("weight_compression", pa.float64()),
        ("weight_bits", pa.int64()), ("baseline_weight_bits", pa.int64()),
        ("storage_compression", pa.float64()),
        ("crossbars_dense", pa.int64()), ("crossbars_compressed", pa.int64()),
        ("power_dense_mw", pa.float64()), ("power_compressed_mw", pa.float64()),
        ("power_reduction", pa.float64()),
        ("area_dense_mm2", pa.float64()), ("area_compressed_mm2", pa.float64()),
        ("area_reduction", pa.float64()),
        ("montecarlo", pa.list_(_MC_STATS)),
    ]),
}

# What each column means where the name alone does not say: kept in schema metadata.
UNITS = {
    "accuracy": "fraction of the split classified correctly, in [0, 1]",
    "power_mw": "milliwatts, from the hardware preset's per-component table",
    "area_mm2": "square millimetres, from the hardware preset's per-component table",
    "weight_compression": "dense weights / non-zero weights of the compressed mapping, x",
    "storage_compression": "32-bit dense weight bits / compressed bits (levels + row/column masks + scales), x",
    "power_reduction": "1 - power_compressed_mw / power_dense_mw",
    "magnitude_accuracy": "test accuracy of one-shot magnitude pruning at the chosen ratios and the "
                          "same training budget (admm.compare_magnitude; null otherwise)",
    "admm_gain": "final_accuracy - magnitude_accuracy",
    "area_reduction": "1 - area_compressed_mm2 / area_dense_mm2",
    "sigma": "programming variation, relative",
    "p_sa0": "probability a device is stuck at g_min", "p_sa1": "probability a device is stuck at g_max",
    "read_noise": "relative std of a device's conductance at every read",
    "drift_nu": "mean drift exponent: G(t) = G0 (t / t0) ** -nu", "drift_nu_std": "std of nu over devices",
    "drift_t_s": "seconds since programming", "adc_bits": "ADC bits per tile, 0 = infinite resolution",
    "dac_bits": "DAC input bits, 0 = infinite resolution",
}
TABLES = tuple(SCHEMAS)


def _schema(table: str, provenance: dict) -> pa.Schema:
    meta = {"memadmm.table": table, "memadmm.schema_version": SCHEMA_VERSION,
            "memadmm.units": json.dumps(UNITS), "memadmm.provenance": json.dumps(provenance)}
    return SCHEMAS[table].with_metadata(meta)


def partition_path(root: str, table: str, run_id: str) -> str:
    return f"{root.rstrip('/')}/tables/{table}/run_id={run_id}"


def replace_folder(fs, staging: str, final: str) -> None:
    """Move `staging` to `final`, replacing what was there; the old folder goes aside first."""
    old = None
    if fs.exists(final):
        old = f"{final.rsplit('/', 1)[0]}/_old-{uuid.uuid4().hex}"
        fs.mv(final, old, recursive=True)
    fs.mv(staging, final, recursive=True)
    if old is not None:
        fs.rm(old, recursive=True)


def write_table(root: str, table: str, run_id: str, rows: Iterable[dict], provenance: dict) -> str:
    """Write one run's rows of `table` atomically; returns the file's path."""
    if table not in SCHEMAS:
        raise UserError(f"table: got {table!r}; allowed: {', '.join(TABLES)}")
    schema = _schema(table, provenance)
    arrow = pa.Table.from_pylist(list(rows), schema=schema)
    fs, path = fsspec.core.url_to_fs(partition_path(root, table, run_id))
    parent = path.rsplit("/", 1)[0]
    staging = f"{parent}/_tmp-{uuid.uuid4().hex}"
    fs.makedirs(staging, exist_ok=True)
    name = f"part-{uuid.uuid4().hex[:12]}.parquet"
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    with fs.open(f"{staging}/{name}", "wb") as f:
        f.write(buffer.getvalue())
    replace_folder(fs, staging, path)
    return f"{path}/{name}"


def read_table(root: str, table: str, run_id: str | None = None) -> pd.DataFrame:
    """All runs of `table` (or one run) as a DataFrame with a run_id column."""
    if table not in SCHEMAS:
        raise UserError(f"--table: got {table!r}; allowed: {', '.join(TABLES)}")
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/tables/{table}")
    if run_id is not None:
        path = f"{path}/run_id={run_id}"
    if not fs.exists(path):
        where = f"run {run_id!r} of " if run_id else ""
        raise UserError(f"no {where}table {table!r} under {root!r}: run `memadmm run` first, "
                        f"or pass the root it wrote to")
    if run_id is not None:
        frame = pq.read_table(path, filesystem=fs).to_pandas()
        frame.insert(0, "run_id", run_id)
        return frame
    frame = pq.read_table(path, filesystem=fs, partitioning="hive").to_pandas()
    frame["run_id"] = frame["run_id"].astype(str)
    return frame[["run_id"] + [c for c in frame.columns if c != "run_id"]]
