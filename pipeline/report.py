"""`memadmm report`: PNG figures and a Markdown summary of one run, from its tables.

    <out>/tune.png         Tune trials: validation accuracy against weight compression,
                           the Pareto front, the chosen trial, the compression target
    <out>/montecarlo.png   Monte-Carlo test accuracy per device scenario (box plots, means)
    <out>/crossbars.png    physical crossbars per layer, dense against compressed
    <out>/power_area.png   power and area per hardware component, dense against compressed
    <out>/summary.md       the `summary` table's numbers with units and sources, links to the PNGs

The default <out> is <root>/runs/<run_id>/report/. Tables are read with
pipeline.tables.read_table and every file is written through fsspec, so a
memory:// or s3:// root works like a local folder. A run without `tune` or
`montecarlo` rows (an `estimate` run) gets the figures its tables allow, and
summary.md says which were skipped and why.

Rounding in summary.md (the `summary` table holds full precision): accuracies
and reductions are percentages with 2 decimals, accuracy differences and
standard deviations percentage points with 2 decimals, compressions 2
decimals, power (mW) and area (mm2) 4 significant digits with at least 2
decimals, counts exact.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from pipeline.errors import UserError
from pipeline.tables import partition_path, read_table

FIGURES = ("tune.png", "montecarlo.png", "crossbars.png", "power_area.png")
DENSE, COMPRESSED = "#7f7f7f", "#1f77b4"   # one colour per variant in every figure
DPI = 120


@dataclass
class Report:
    """What `build_report` wrote: the output folder, the files in it, and the figures it skipped."""
    out: str
    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # figure -> why


# ---- reading -----------------------------------------------------------------------------

def run_ids(root: str) -> list[str]:
    """Run ids under `root` that have a `summary` row, sorted."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/tables/summary")
    if not fs.exists(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted(n.split("=", 1)[1] for n in names if n.startswith("run_id="))


def _has(root: str, table: str, run_id: str) -> bool:
    fs, path = fsspec.core.url_to_fs(partition_path(root, table, run_id))
    return fs.exists(path)


def _optional(root: str, table: str, run_id: str) -> pd.DataFrame:
    """The run's rows of `table`, or an empty frame when the run wrote none."""
    return read_table(root, table, run_id) if _has(root, table, run_id) else pd.DataFrame()


def _check(root: str, run_id: str) -> None:
    """Refuse a root without tables and a run id without a summary, naming what there is."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/tables")
    if not fs.exists(path):
        raise UserError(f"ROOT: got {root!r}, which has no tables/ folder; allowed: a results root written by "
                        "`memadmm run` or `memadmm estimate` (output.root, default: results)")
    known = run_ids(root)
    if run_id in known:
        return
    shown = ", ".join(known[-20:]) + (f" (and {len(known) - 20} older)" if len(known) > 20 else "")
    allowed = f"allowed: a run id with a summary under {root!r}: {shown}" if known else \
        f"no run under {root!r} has a summary yet"
    if _has(root, "runs", run_id):
        status = read_table(root, "runs", run_id)["status"].iloc[-1]
        raise UserError(f"--run-id: run {run_id!r} has status {status!r} and no summary row to report on; {allowed}")
    raise UserError(f"--run-id: got {run_id!r}, no such run; {allowed}")


# ---- number formatting (the rounding the module docstring states) ------------------------

def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pct(v) -> str:
    """A fraction as a percentage, 2 decimals, no unit."""
    return "n/a" if _missing(v) else f"{100 * v:.2f}"


def fixed(v, decimals: int = 2) -> str:
    return "n/a" if _missing(v) else f"{v:.{decimals}f}"


def sig4(v) -> str:
    """4 significant digits, at least 2 decimals, fixed notation (902.64, 0.4798, 0.03498)."""
    if _missing(v):
        return "n/a"
    decimals = 2 if v == 0 else max(2, 3 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


def short(v: float) -> str:
    """A bar label: 3 significant digits (768, 24, 0.0075, 3e-05), whole numbers from 1000."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


# ---- figures -----------------------------------------------------------------------------

def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def tune_trials(tune: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (the tune table has one per trial x layer; a trial's metrics are its
    last report and the same on every layer row), in table order."""
    keep = ["trial_id", "rho", "status", "epochs", "val_accuracy", "weight_compression", "crossbars",
            "meets_target", "score", "chosen"]
    return tune.groupby("trial_id", sort=False)[keep[1:]].last().reset_index()


def pareto_front(compression: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the front `y(x) = max accuracy over trials with compression >= x`, at each
    trial's compression, x ascending; draw with drawstyle="steps-pre"."""
    order = np.argsort(compression)
    x, y = compression[order], accuracy[order]
    return x, np.maximum.accumulate(y[::-1])[::-1]


def tune_figure(trials: pd.DataFrame, target: float | None) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    done = trials.dropna(subset=["val_accuracy", "weight_compression"])
    styles = {"completed": ("o", "#1f77b4", "completed trial"),
              "stopped": ("x", "#ff7f0e", "stopped early (its last epoch)")}
    for status, frame in done.groupby("status", sort=False):
        marker, colour, name = styles.get(status, ("s", "#9467bd", f"{status} trial"))
        ax.scatter(frame["weight_compression"], 100 * frame["val_accuracy"], marker=marker, color=colour,
                   s=36, zorder=3, label=f"{name} ({len(frame)})")
    x, y = pareto_front(done["weight_compression"].to_numpy(float), done["val_accuracy"].to_numpy(float))
    ax.plot(x, 100 * y, drawstyle="steps-pre", color="#2ca02c", lw=1.5, zorder=2,
            label="Pareto front: best accuracy at \u2265 this compression")
    chosen = done[done["chosen"].fillna(False).astype(bool)]
    for _, row in chosen.iterrows():
        ax.scatter([row["weight_compression"]], [100 * row["val_accuracy"]], marker="*", s=260,
                   facecolor="gold", edgecolor="black", zorder=4,
                   label=f"chosen trial {row['trial_id']}")
        ax.annotate(f"{100 * row['val_accuracy']:.2f} %, {row['weight_compression']:.2f}x",
                    (row["weight_compression"], 100 * row["val_accuracy"]), textcoords="offset points",
                    xytext=(-10, -16), ha="right", fontsize=8)
    if target is not None:
        ax.axvline(target, color="#d62728", ls="--", lw=1.2, label=f"target {target:g}x (admm.target_compression)")
    xs = [*done["weight_compression"], *([target] if target else [])]
    log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 10
    if log:                               # plain numbers on a log axis: 10, 20, 50, 100, ...
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    ax.set_xlabel("weight compression (dense / non-zero weights, x" + (", log scale)" if log else ")"))
    ax.set_ylabel("validation accuracy after hard projection (%)")
    failed = len(trials) - len(done)
    ax.set_title(f"Tune trials ({len(trials)}" + (f", {failed} failed without metrics" if failed else "")
                 + "); chosen: best score among completed trials", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def montecarlo_figure(mc: pd.DataFrame, final_accuracy: float | None) -> Figure:
    order = list(dict.fromkeys(mc["scenario_id"]))
    data = [100 * mc.loc[mc["scenario_id"] == s, "accuracy"].to_numpy(float) for s in order]
    fig = Figure(figsize=(max(6.0, 1.1 * len(order) + 2), 4.5))
    ax = fig.add_subplot()
    ax.boxplot(data, showmeans=True, whis=(5, 95), widths=0.6,
               meanprops={"marker": "D", "markerfacecolor": "#d62728", "markeredgecolor": "#d62728",
                          "markersize": 5},
               medianprops={"color": "#1f77b4"}, flierprops={"markersize": 3})
    ax.set_xticks(range(1, len(order) + 1), order, rotation=25, ha="right")
    handles = [ax.plot([], [], "D", color="#d62728", markersize=5, label="mean")[0],
               ax.plot([], [], "-", color="#1f77b4", label="median; box: quartiles; whiskers: 5th-95th pct")[0]]
    if not _missing(final_accuracy):
        handles.append(ax.axhline(100 * final_accuracy, color="#7f7f7f", ls="--", lw=1,
                                  label="final test accuracy, no device variation"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    trials = mc.groupby("scenario_id").size()
    ax.set_title(f"Monte-Carlo test accuracy per device scenario ({trials.min()}"
                 + (f"-{trials.max()}" if trials.max() != trials.min() else "") + " trials each)")
    ax.set_xlabel("device scenario (scenario_id)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _grouped_bars(ax, labels: list[str], dense: list[float], compressed: list[float], fmt) -> None:
    """Dense and compressed bars side by side per label, each with its value on top; a log
    axis when the values span more than a factor of 20 and none is zero."""
    x = np.arange(len(labels))
    width = 0.4
    for offset, values, name, colour in ((-width / 2, dense, "dense", DENSE),
                                         (width / 2, compressed, "compressed", COMPRESSED)):
        bars = ax.bar(x + offset, values, width, label=name, color=colour)
        ax.bar_label(bars, [fmt(v) for v in values], fontsize=7, padding=1)
    positive = [v for v in [*dense, *compressed] if v > 0]
    if positive and len(positive) == len(dense) + len(compressed) and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 2, max(positive) * 4)
    else:
        ax.set_ylim(0, max(positive, default=1) * 1.15)
    ax.set_xticks(x, labels, rotation=25 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def crossbars_figure(layers: pd.DataFrame) -> Figure:
    order = list(dict.fromkeys(layers["layer"]))
    by = layers.pivot_table(index="layer", columns="variant", values="crossbars", aggfunc="sum").reindex(order)
    dense, comp = by.get("dense", pd.Series(0, index=order)), by.get("compressed", pd.Series(0, index=order))
    fig = Figure(figsize=(max(6.0, 0.8 * len(order) + 3), 4.5))
    ax = fig.add_subplot()
    _grouped_bars(ax, order, dense.fillna(0).tolist(), comp.fillna(0).tolist(), lambda v: f"{v:.0f}")
    log = ", log scale" if ax.get_yscale() == "log" else ""
    ax.set_xlabel("crossbar layer")
    ax.set_ylabel(f"physical crossbars (count{log})")
    ax.set_title(f"Crossbars per layer: {dense.sum():.0f} dense -> {comp.sum():.0f} compressed")
    return fig


def power_area_figure(hardware: pd.DataFrame) -> Figure:
    order = list(dict.fromkeys(hardware["component"]))
    sums = hardware.groupby(["component", "variant"])[["power_mw", "area_mm2"]].sum()
    fig = Figure(figsize=(max(9.0, 1.6 * len(order) + 4), 4.5))
    for i, (column, name, unit) in enumerate((("power_mw", "power", "mW"), ("area_mm2", "area", "mm\u00b2"))):
        ax = fig.add_subplot(1, 2, i + 1)
        dense = [float(sums[column].get((c, "dense"), 0.0)) for c in order]
        comp = [float(sums[column].get((c, "compressed"), 0.0)) for c in order]
        _grouped_bars(ax, order, dense, comp, short)
        log = ", log scale" if ax.get_yscale() == "log" else ""
        ax.set_xlabel("component (sum over layers)")
        ax.set_ylabel(f"{name} ({unit}{log})")
        change = f" ({pct(1 - sum(comp) / sum(dense))} % less)" if sum(dense) > 0 else ""
        ax.set_title(f"{name.capitalize()}: {sig4(sum(dense))} -> {sig4(sum(comp))} {unit}{change}")
    scope = ", ".join(sorted(hardware["scope"].dropna().unique()))
    preset = ", ".join(sorted(hardware["preset"].dropna().unique()))
    fig.suptitle(f"Power and area by component, dense against compressed ({preset} costs, scope: {scope})")
    fig.tight_layout()
    return fig


# ---- summary.md --------------------------------------------------------------------------

def _target(runs: pd.DataFrame) -> float | None:
    if runs.empty:
        return None
    config = json.loads(runs["config"].iloc[-1])
    return config.get("admm", {}).get("target_compression")


def summary_markdown(run_id: str, root: str, runs: pd.DataFrame, s: pd.Series, trials: pd.DataFrame,
                     target: float | None, report: Report) -> str:
    status = runs["status"].iloc[-1] if not runs.empty else "unknown"
    preset = runs["preset"].iloc[-1] if not runs.empty else ""
    src = f"`{root.rstrip('/')}/tables/summary/run_id={run_id}`"
    measured = "" if s["method"] != "estimate" else " (not measured: an `estimate` run trains nothing)"
    rows = [
        ("baseline test accuracy", pct(s["baseline_accuracy"]), "%",
         "summary.baseline_accuracy: dense pretrained model" + measured),
        ("final test accuracy", pct(s["final_accuracy"]), "%",
         "summary.final_accuracy: retrained model on conductance levels" + measured),
        ("accuracy loss", pct(s["accuracy_loss"]), "points", "summary.accuracy_loss: baseline - final"),
    ]
    if not _missing(s.get("magnitude_accuracy")):
        rows += [("magnitude-pruning test accuracy", pct(s["magnitude_accuracy"]), "%",
                  "summary.magnitude_accuracy: one-shot magnitude pruning, same ratios and budget"),
                 ("ADMM gain over magnitude pruning", pct(s["admm_gain"]), "points", "summary.admm_gain")]
    rows += [
        ("weight compression", fixed(s["weight_compression"]), "x",
         "summary.weight_compression: dense weights / non-zero weights"),
        ("storage compression", fixed(s["storage_compression"]), "x",
         "summary.storage_compression: float32 dense bits / compressed bits"),
        ("weight bits", f"{s['baseline_weight_bits']} -> {s['weight_bits']}", "bits",
         "summary.baseline_weight_bits -> weight_bits"),
        ("crossbars", f"{s['crossbars_dense']} -> {s['crossbars_compressed']}", "crossbars",
         "summary.crossbars_dense -> crossbars_compressed"),
        ("power", f"{sig4(s['power_dense_mw'])} -> {sig4(s['power_compressed_mw'])}", "mW",
         "summary.power_dense_mw -> power_compressed_mw: hardware preset table"),
        ("power reduction", pct(s["power_reduction"]), "%", "summary.power_reduction: 1 - compressed / dense"),
        ("area", f"{sig4(s['area_dense_mm2'])} -> {sig4(s['area_compressed_mm2'])}", "mm2",
         "summary.area_dense_mm2 -> area_compressed_mm2: hardware preset table"),
        ("area reduction", pct(s["area_reduction"]), "%", "summary.area_reduction: 1 - compressed / dense"),
    ]
    lines = [
        f"# memadmm report: run `{run_id}`",
        "",
        f"Model `{s['model']}` on `{s['dataset']}`, method `{s['method']}`"
        + (f", preset `{preset}`" if preset else "") + f", run status `{status}`.",
        (f"Numbers from the `summary` table, {src}. Rounding: accuracies and reductions are percentages "
         "with 2 decimals, differences and standard deviations percentage points with 2 decimals, "
         "compressions 2 decimals, power and area 4 significant digits (at least 2 decimals); "
         "the table holds full precision."),
        "",
        "## Headline",
        "",
        "| quantity | value | unit | from |",
        "| --- | --- | --- | --- |",
        *(f"| {q} | {v} | {u} | {f} |" for q, v, u, f in rows),
        "",
        "## Monte-Carlo test accuracy per device scenario",
        "",
    ]
    mc = s["montecarlo"]
    mc = [] if mc is None else list(mc)
    if mc:
        lines += [("From summary.montecarlo (mean, std with ddof=1, and 5th percentile over the trials "
                   "of the `montecarlo` table)."), "",
                  "| scenario | variation | sigma | p_sa0 | p_sa1 | adc_bits | trials | mean (%) | std (points) | p5 (%) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {m['scenario_id']} | {m['variation']} | {m['sigma']:g} | {m['p_sa0']:g} | {m['p_sa1']:g} | "
                  f"{m['adc_bits']} | {m['trials']} | {pct(m['mean'])} | {pct(m['std'])} | {pct(m['p5'])} |"
                  for m in mc]
    else:
        lines.append("None: summary.montecarlo is empty for this run.")
    lines += ["", "## Tune search", ""]
    if trials.empty:
        lines.append("None: the run has no rows in the `tune` table.")
    else:
        counts = trials["status"].value_counts()
        lines.append(f"{len(trials)} trials (" + ", ".join(f"{n} {k}" for k, n in counts.items())
                     + f"), target compression {target:g}x (admm.target_compression in the `runs` table's config)."
                     if target is not None else f"{len(trials)} trials.")
        for _, t in trials[trials["chosen"].fillna(False).astype(bool)].iterrows():
            lines.append(f"Chosen trial `{t['trial_id']}` (tune.chosen: best score among trials that ran every "
                         f"epoch): rho {t['rho']:g}, validation accuracy {pct(t['val_accuracy'])} %, weight "
                         f"compression {fixed(t['weight_compression'])} x, {t['crossbars']} crossbars.")
    captions = {
        "tune.png": "Tune trials: validation accuracy (%) against weight compression (x), Pareto front, "
                    "chosen trial, target compression",
        "montecarlo.png": "Monte-Carlo test accuracy (%) per device scenario; diamonds are means",
        "crossbars.png": "Physical crossbars per layer, dense against compressed",
        "power_area.png": "Power (mW) and area (mm\u00b2) per component, summed over layers, dense against "
                          "compressed",
    }
    lines += ["", "## Figures", ""]
    for name in FIGURES:
        if name in report.skipped:
            lines += [f"- `{name}` skipped: {report.skipped[name]}", ""]
        else:
            lines += [f"![{captions[name]}]({name})", "", f"[{name}]({name}): {captions[name]}.", ""]
    return "\n".join(lines)


# ---- the report --------------------------------------------------------------------------

def build_report(root: str, run_id: str, out: str | None = None) -> Report:
    """Write the figures and summary.md of `run_id` under `out` (default <root>/runs/<run_id>/report)."""
    _check(root, run_id)
    out = (out or f"{root.rstrip('/')}/runs/{run_id}/report").rstrip("/")
    report = Report(out=out)
    summary = read_table(root, "summary", run_id).iloc[-1]
    runs = _optional(root, "runs", run_id)
    tune, mc = _optional(root, "tune", run_id), _optional(root, "montecarlo", run_id)
    layers, hardware = _optional(root, "layers", run_id), _optional(root, "hardware", run_id)
    trials = tune_trials(tune) if not tune.empty else pd.DataFrame()
    target = _target(runs)
    why = f"method `{summary['method']}`" + (": an estimate run has no Tune search and no Monte Carlo"
                                            if summary["method"] == "estimate" else "")
    figures = {
        "tune.png": (lambda: tune_figure(trials, target)) if not trials.empty
        else f"the run has no rows in the `tune` table ({why})",
        "montecarlo.png": (lambda: montecarlo_figure(mc, summary["final_accuracy"])) if not mc.empty
        else f"the run has no rows in the `montecarlo` table ({why})",
        "crossbars.png": (lambda: crossbars_figure(layers)) if not layers.empty
        else "the run has no rows in the `layers` table",
        "power_area.png": (lambda: power_area_figure(hardware)) if not hardware.empty
        else "the run has no rows in the `hardware` table",
    }
    fs, path = fsspec.core.url_to_fs(out)
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot write to {out!r} ({exc}); allowed: a writable folder or fsspec URL") from None

    def write(name: str, data: bytes) -> None:
        with fs.open(f"{path}/{name}", "wb") as f:
            f.write(data)
        report.files.append(f"{out}/{name}")

    for name, make in figures.items():
        if isinstance(make, str):
            report.skipped[name] = make
        else:
            write(name, _png(make()))
    write("summary.md", summary_markdown(run_id, root, runs, summary, trials, target, report).encode())
    return report
