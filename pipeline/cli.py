"""`memadmm`: run, validate, query, report.

A user's mistake (bad config value, unknown preset, missing table) prints
one line naming the field and value, and exits with status 2; no traceback.
"""

from __future__ import annotations

import logging
import sys

import click
from rich.console import Console
from rich.table import Table

from pipeline.errors import UserError, run_options, user_errors

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns; the summary needs about 110.
console = Console() if sys.stdout.isatty() else Console(width=120)


@click.group()
def main() -> None:
    """Compress a PyTorch network for memristor crossbars with ADMM and tabulate its costs."""


@main.command()
@run_options
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
@click.option("--quiet", is_flag=True, help="print only the summary: no progress bars, no stage lines")
@user_errors
def run(source, overrides, address, run_id, quiet) -> None:
    """Run the whole pipeline and write its Parquet tables under output.root.

    Stage lines and live progress (Tune trials, Monte-Carlo trials) go to stderr, the summary to stdout.
    """
    from pipeline.config import load_config

    cfg = load_config(source, overrides)          # refused here, before Ray starts
    from pipeline.progress import ConsoleHandler
    from pipeline.run import run_pipeline

    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=None if quiet else [ConsoleHandler()])   # log lines above the bars
    logging.getLogger("memadmm").setLevel(level)  # also where the root logger was set up before us
    summary = run_pipeline(cfg, run_id=run_id, address=address, preset=source, progress=not quiet)
    print_summary(summary, cfg.output.root)


def print_summary(s: dict, root: str) -> None:
    pct = lambda v: f"{100 * v:.2f} %"
    t = Table(title=f"memadmm run {s['run_id']}  ({s['model']} on {s['dataset']})", show_header=True)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("from")
    t.add_row("baseline test accuracy", pct(s["baseline_accuracy"]), "dense pretrained model")
    t.add_row("final test accuracy", pct(s["final_accuracy"]), "retrained model on levels")
    t.add_row("accuracy loss", f"{100 * s['accuracy_loss']:.2f} points", "baseline - final")
    t.add_row("weight compression", f"{s['weight_compression']:.2f} x", "dense weights / non-zero weights")
    t.add_row("storage compression", f"{s['storage_compression']:.2f} x", "float32 dense / compressed bits")
    t.add_row("weight bits", f"{s['weight_bits']} (dense {s['baseline_weight_bits']})", "mapping config")
    t.add_row("crossbars", f"{s['crossbars_dense']} -> {s['crossbars_compressed']}", "dense -> compressed")
    t.add_row("power", f"{s['power_dense_mw']:.2f} -> {s['power_compressed_mw']:.2f} mW "
              f"({pct(s['power_reduction'])} less)", "hardware preset table")
    t.add_row("area", f"{s['area_dense_mm2']:.4f} -> {s['area_compressed_mm2']:.4f} mm2 "
              f"({pct(s['area_reduction'])} less)", "hardware preset table")
    console.print(t)
    mc = Table(title="Monte-Carlo test accuracy per device scenario", show_header=True)
    for col in ("scenario", "variation", "sigma", "p_sa0", "p_sa1", "trials", "mean", "std", "5th pct"):
        mc.add_column(col, justify="right")
    for m in s["montecarlo"]:
        mc.add_row(m["scenario_id"], m["variation"], f"{m['sigma']:g}", f"{m['p_sa0']:g}", f"{m['p_sa1']:g}",
                   str(m["trials"]), pct(m["mean"]), f"{100 * m['std']:.2f} points", pct(m["p5"]))
    console.print(mc)
    console.print(f"tables: {root.rstrip('/')}/tables/<table>/run_id={s['run_id']}/  "
                  "(runs, accuracy, layers, hardware, tune, montecarlo, summary)")


MODEL_PRESETS = {"mlp": "quick", "convnet": "quick-convnet", "lenet5": "lenet5-mnist",
                 "vgg16": "vgg16-cifar10", "resnet18": "resnet18-cifar10"}


@main.command()
@click.option("--config", "source", default=None, help="preset or YAML file (default: --model's preset)")
@click.option("--model", "model_name", type=click.Choice(sorted(MODEL_PRESETS)), default=None,
              help="architecture; its paper preset gives data shape, mapping and hardware")
@click.option("--checkpoint", default=None, help="state dict to take the weights from (default: initial weights)")
@click.option("--compression", type=float, default=None, help="uniform weight compression target, x")
@click.option("--keep", multiple=True, metavar="LAYER=FRACTION", help="fraction of a layer's weights kept")
@click.option("--structure", type=click.Choice(["filter+shape", "shape", "block"]), default="filter+shape",
              show_default=True, help="what pruning removes (see README)")
@click.option("--weight-bits", type=int, default=None, help="compressed weight precision (mapping.weight_bits)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--run-id", default=None, help="run id of the written rows (default: estimate-<time stamp>)")
@click.option("--no-write", is_flag=True, help="print only; write no tables")
@user_errors
def estimate(source, model_name, checkpoint, compression, keep, structure, weight_bits, overrides, fmt,
             run_id, no_write) -> None:
    """Crossbars, power and area of a model at given keep ratios and bits, without training."""
    import json

    from pipeline.config import load_config
    from pipeline.estimate import estimate as run_estimate
    from pipeline.estimate import load_checkpoint, template_of
    from pipeline.run import Recorder, new_run_id

    if source is None and model_name is None:
        raise UserError("estimate: give --model NAME or --config PRESET|FILE")
    items = list(overrides)
    if model_name is not None:
        items.insert(0, f"model.name={model_name}")
    if weight_bits is not None:
        items.append(f"mapping.weight_bits={weight_bits}")
    cfg = load_config(source or MODEL_PRESETS[model_name], items)
    if (compression is None) == (not keep):
        raise UserError("estimate: give exactly one of --compression X or --keep LAYER=FRACTION ...")
    fractions = {}
    for item in keep:
        layer, sep, value = item.partition("=")
        try:
            fractions[layer] = float(value)
        except ValueError:
            raise UserError(f"--keep: got {item!r}; allowed: LAYER=FRACTION, e.g. conv2=0.1") from None
        if not sep:
            raise UserError(f"--keep: got {item!r}; allowed: LAYER=FRACTION, e.g. conv2=0.1")
    model = template_of(cfg)
    if checkpoint is not None:
        model = load_checkpoint(model, checkpoint)
    layers, hardware, summary = run_estimate(cfg, model=model, compression=compression, keep=fractions,
                                             structure=structure)
    if not no_write:
        run_id = run_id or "estimate-" + new_run_id()
        rec = Recorder(cfg, run_id, "estimate", cfg.model.name)
        rec.start()
        rec.table("layers", layers)
        rec.table("hardware", hardware)
        rec.table("summary", [{**summary, "dataset": cfg.data.name, "method": "estimate"}])
        rec.status("succeeded")
        summary["run_id"] = run_id
    if fmt == "json":
        click.echo(json.dumps(summary))
        return
    pct = lambda v: f"{100 * v:.2f} %"
    t = Table(title=f"estimate: {cfg.model.name}, {structure}, {summary['weight_bits']}-bit "
                    f"(dense {summary['baseline_weight_bits']}-bit), {summary['xbar_rows']}x{summary['xbar_cols']} "
                    f"crossbars, {summary['hardware_preset']} costs")
    t.add_column("quantity")
    t.add_column("dense", justify="right")
    t.add_column("compressed", justify="right")
    t.add_column("reduction", justify="right")
    t.add_row("weight compression", "", f"{summary['weight_compression']:.2f} x", "")
    t.add_row("crossbars", str(summary["crossbars_dense"]), str(summary["crossbars_compressed"]),
              pct(1 - summary["crossbars_compressed"] / summary["crossbars_dense"]))
    t.add_row("power (mW)", f"{summary['power_dense_mw']:.1f}", f"{summary['power_compressed_mw']:.1f}",
              pct(summary["power_reduction"]))
    t.add_row("area (mm2)", f"{summary['area_dense_mm2']:.4f}", f"{summary['area_compressed_mm2']:.4f}",
              pct(summary["area_reduction"]))
    console.print(t)
    if not no_write:
        console.print(f"tables: {cfg.output.root.rstrip('/')}/tables/{{layers,hardware,summary}}/run_id={run_id}/")


@main.command()
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--list", "list_presets", is_flag=True, help="list the presets")
@user_errors
def validate(config, overrides, list_presets) -> None:
    """Check a config (preset or file) and print it resolved."""
    from pipeline.config import load_config, presets

    if list_presets:
        click.echo("\n".join(presets()))
        return
    if config is None:
        raise UserError("validate: a CONFIG (preset name or YAML file) is required")
    click.echo(load_config(config, overrides).to_yaml(), nl=False)


@main.command()
@click.argument("root", required=False, default="results")
@click.option("--table", "table", required=True, help="runs, accuracy, layers, hardware, tune, montecarlo, summary")
@click.option("--run-id", default=None)
@click.option("--where", default=None, help="pandas query expression, e.g. \"sigma > 0\"")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@user_errors
def query(root, table, run_id, where, fmt) -> None:
    """Print a table (all runs, or one) from ROOT (default: results)."""
    import pandas as pd
    from pipeline.tables import read_table

    frame = read_table(root, table, run_id)
    if where:
        try:
            frame = frame.query(where)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise UserError(f"--where: got {where!r}; not a valid pandas query on columns "
                            f"{', '.join(frame.columns)} ({exc})") from None
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(frame.to_json(orient="records", default_handler=str))
    else:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            click.echo(frame.to_string(index=False))


@main.command()
@click.argument("root", required=False, default="results")
@click.option("--run-id", required=True, help="the run to report on (see `memadmm query --table summary`)")
@click.option("--out", default=None, help="output folder or fsspec URL (default: ROOT/runs/RUN_ID/report)")
@user_errors
def report(root, run_id, out) -> None:
    """Write PNG figures and summary.md for one run of ROOT (default: results)."""
    from pipeline.report import build_report

    done = build_report(root, run_id, out)
    click.echo(f"report of run {run_id}: {done.out}/")
    for path in done.files:
        click.echo(f"  {path}")
    for name, why in done.skipped.items():
        click.echo(f"  skipped {name}: {why}")


from pipeline.submit import submit as _submit  # noqa: E402 - defined after `main`, which it extends

main.add_command(_submit)

if __name__ == "__main__":
    main()
