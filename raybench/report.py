"""``python -m raybench.report RESULTS_DIR``: per-trial summary on stdout, PNG plots and one offline HTML page.

RESULTS_DIR is a sweep folder (``results/<sweep>``), a folder of sweeps, or one trial file. Targets
and budgets come from each trial's own config (``goal`` in the file metadata) unless ``--target`` /
``--budget`` override them. Plots are drawn with matplotlib's Agg backend (no display needed);
``index.html`` embeds every PNG as a data URI, so it opens offline and can be mailed as one file.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raybench import results
from raybench.analysis import metrics

EXIT_BAD_INPUT = 2
REPORT_DIR = "_report"  # default --out, inside RESULTS_DIR; "_" keeps it out of the Parquet dataset
Key = tuple[str, str]  # (sweep, trial_id)


class ResultsError(ValueError):
    """RESULTS_DIR is missing, holds no trial files, or a file cannot be read: the message says which."""


# ---------------------------------------------------------------- reading a results folder

@dataclass(frozen=True)
class Results:
    """Every epoch row, and per trial its file and its metadata (keys and values as text)."""

    rows: pd.DataFrame
    files: dict[Key, Path]
    meta: dict[Key, dict[str, str]]

    def config(self, key: Key) -> dict[str, Any]:
        """The trial's resolved config (TrialSpec JSON), or {} when the file has none."""
        raw = self.meta.get(key, {}).get(results.META_CONFIG.decode())
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return {}


def trial_files(path: str | Path) -> list[Path]:
    """The trial files under ``path`` as ``results.read_results`` sees them (names starting with '_' or
    '.' left out); raises ResultsError naming the path when there is nothing to read."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: no such folder (give results/<sweep> as written by "
                           f"python -m raybench.sweep)")
    try:
        files = pads.dataset(str(path), format="parquet", ignore_prefixes=[".", "_"]).files
    except (pa.ArrowInvalid, OSError) as e:
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: cannot be read as Parquet ({e})") from None
    files = sorted(Path(f) for f in files if f.endswith(".parquet"))
    if not files:
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: no trial files (*.parquet) in it; run "
                           f"python -m raybench.sweep first, or give the sweep's folder")
    return files


def load(path: str | Path) -> Results:
    """Rows (through results.read_results) and each trial's metadata."""
    files, meta = {}, {}
    for f in trial_files(path):
        try:
            schema_meta = pq.read_schema(f).metadata or {}
            keys = pq.read_table(f, columns=list(metrics.TRIAL_KEY)).slice(0, 1).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise ResultsError(f"{f}: not a readable trial file ({e})") from None
        if not keys:
            continue  # a file without rows says nothing
        key = (keys[0]["sweep"], keys[0]["trial_id"])
        files[key] = f
        meta[key] = {k.decode(): v.decode() for k, v in schema_meta.items() if k.startswith(b"raybench.")}
    try:
        rows = results.read_results(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: cannot be read as one dataset ({e})") from None
    if rows.empty:
        raise ResultsError(f"RESULTS_DIR {str(path)!r}: the trial files hold no epoch rows yet")
    return Results(rows, files, meta)


def goals(res: Results, target: float | None = None, budget: float | None = None) -> tuple[dict, dict]:
    """Per trial, the accuracy target and the time budget: the overrides when given, else the trial's
    ``goal.target_top1`` / ``goal.time_budget_s`` (None when its config does not say)."""
    targets, budgets = {}, {}
    for key in res.files:
        goal = res.config(key).get("goal", {})
        targets[key] = target if target is not None else goal.get("target_top1")
        budgets[key] = budget if budget is not None else goal.get("time_budget_s")
    return targets, budgets


# ---------------------------------------------------------------- tables

def trial_order(rows: pd.DataFrame) -> list[Key]:
    """Trials sorted by configuration, then by workers, so that scaling reads down the table."""
    firsts = rows.drop_duplicates(list(metrics.TRIAL_KEY))
    firsts = firsts.sort_values(list(metrics.CONFIG_KEY) + ["workers", "trial_id"], na_position="last")
    return list(firsts[list(metrics.TRIAL_KEY)].itertuples(index=False, name=None))


def summary(res: Results, targets: dict, budgets: dict) -> pd.DataFrame:
    """metrics.summary in trial order, with each file's status (running / complete)."""
    table = metrics.summary(res.rows, targets, budgets)
    table["status"] = [res.meta.get(k, {}).get(results.META_STATUS.decode(), "?")
                       for k in zip(table["sweep"], table["trial_id"])]
    order = {k: i for i, k in enumerate(trial_order(res.rows))}
    table["_order"] = [order[k] for k in zip(table["sweep"], table["trial_id"])]
    return table.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def _pct(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}%"


def _num(x, fmt: str = ".1f", none: str = "-") -> str:
    return none if x is None or pd.isna(x) else format(x, fmt)


def bandwidth_text(bw) -> str:
    return "unlimited" if bw is None or pd.isna(bw) else f"{bw:g} Mbit/s"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as text columns with units, for stdout and HTML."""
    out = pd.DataFrame({
        "trial": table["trial_id"],
        "workers": table["workers"].astype(str),
        "bandwidth": [bandwidth_text(b) for b in table["bandwidth_mbps"]],
        "latency": [f"{x:g} ms" for x in table["latency_ms"]],
        "epochs": table["epochs"].astype(str),
        "status": [s if pd.isna(c) else f"{s} (budget cut epoch {int(c)})"
                   for s, c in zip(table["status"], table["budget_cut_epoch"])],
        "target": [_pct(t) for t in table["target_top1"]],
        "time to target (s)": [_num(t, none="not reached" if not pd.isna(g) else "-")
                               for t, g in zip(table["time_to_target_s"], table["target_top1"])],
        "budget (s)": [_num(b, "g") for b in table["budget_s"]],
        "top-1 after budget": [_pct(a) for a in table["top1_after_budget"]],
        "final top-1": [_pct(a) for a in table["final_top1"]],
        "images/s": [_num(x) for x in table["images_per_second"]],
        "comm share": [_pct(x) for x in table["comm_share"]],
    })
    if table["sweep"].nunique() > 1:
        out.insert(0, "sweep", table["sweep"])
    return out


def _time_metrics(targets: dict) -> list[tuple[str, str, Callable]]:
    """(name, line style, metric) for speedup: time to each trial's own target, and time per epoch."""
    def to_target(rows: pd.DataFrame):
        key = (rows["sweep"].iloc[0], rows["trial_id"].iloc[0])
        target = targets.get(key)
        return None if target is None else metrics.time_to_accuracy(rows, target)

    return [("time to target", "-", to_target), ("time per epoch", "--", metrics.seconds_per_epoch)]


def scaling_table(rows: pd.DataFrame, targets: dict) -> pd.DataFrame:
    """Speedup and efficiency per trial for both time metrics (configurations without a 1-worker trial
    are left out; ``metrics.missing_baselines`` names them)."""
    parts = []
    for name, _, fn in _time_metrics(targets):
        s = metrics.scaling(rows, fn, strict=False)
        s.insert(0, "metric", name)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)


def scaling_display(scal: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": scal["metric"], "trial": scal["trial_id"], "workers": scal["workers"].astype(str),
        "seconds": [_num(x) for x in scal["seconds"]],
        "1-worker seconds": [_num(x) for x in scal["baseline_seconds"]],
        "speedup": [_num(x, ".2f") for x in scal["speedup"]],
        "efficiency": [_pct(x) for x in scal["efficiency"]],
    })


# ---------------------------------------------------------------- plots

def _figure(width: float = 8.0, height: float = 4.8):
    from matplotlib.figure import Figure  # object API: no pyplot state, Agg canvas on savefig

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


VARYING = ("sweep", "model", "algorithm", "hardware", "workers", "bandwidth_mbps", "latency_ms",
           "batch_per_worker", "seed")


def _field_text(field: str, v) -> str:
    if field == "workers":
        return f"{int(v)} worker{'s' if v != 1 else ''}"
    if field == "bandwidth_mbps":
        return bandwidth_text(v)
    if field == "latency_ms":
        return f"{v:g} ms"
    if field == "batch_per_worker":
        return f"batch {v}/worker"
    if field == "seed":
        return f"seed {v}"
    return str(v)


def labels(rows: pd.DataFrame, exclude: Sequence[str] = ()) -> dict[Key, str]:
    """Short legend labels per trial: only the fields that differ between the trials shown."""
    firsts = rows.drop_duplicates(list(metrics.TRIAL_KEY))
    fields = [f for f in VARYING if f not in exclude and firsts[f].nunique(dropna=False) > 1]
    if not fields:
        fields = [f for f in ("model", "workers") if f not in exclude]
    out = {}
    for _, r in firsts.iterrows():
        out[(r["sweep"], r["trial_id"])] = ", ".join(_field_text(f, r[f]) for f in fields)
    return out


def time_unit(max_seconds: float) -> tuple[float, str]:
    """A divisor and unit name so that training-time axes read in s, min or h."""
    if max_seconds >= 3 * 3600:
        return 3600.0, "h"
    if max_seconds >= 600:
        return 60.0, "min"
    return 1.0, "s"


def plot_accuracy_vs_time(rows: pd.DataFrame, targets: dict, budgets: dict):
    """Test top-1 after each epoch against cumulative training time, one line per trial."""
    fig = _figure()
    ax = fig.add_subplot()
    div, unit = time_unit(rows["train_seconds"].max())
    names = labels(rows)
    for i, key in enumerate(trial_order(rows)):
        g = rows[(rows["sweep"] == key[0]) & (rows["trial_id"] == key[1])].sort_values("epoch")
        ax.plot(g["train_seconds"] / div, 100 * g["test_top1"], marker="o", markersize=3, label=names[key],
                **line_style(i))
    for t in sorted({t for t in targets.values() if t is not None}):
        ax.axhline(100 * t, color="gray", linestyle="--", linewidth=1, label=f"target {100 * t:g}%")
    for b in sorted({b for b in budgets.values() if b is not None}):
        if b <= rows["train_seconds"].max() * 1.05:
            ax.axvline(b / div, color="gray", linestyle=":", linewidth=1, label=f"budget {b:g} s")
    ax.set_xlabel(f"training time ({unit}, cumulative, evaluation excluded)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Test accuracy against training time")
    ax.grid(True, alpha=0.3)
    if len(names) > 6:
        fig.set_figwidth(10.0)
        fig.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside right upper")
    else:
        ax.legend(fontsize="small", loc="best")
    return fig


def line_style(i: int) -> dict[str, str]:
    """Colour and dash for the i-th line: ten colours, then the same colours dashed, dotted, ..."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", "-.", ":")[(i // 10) % 4]}


def plot_scaling(scal: pd.DataFrame, rows: pd.DataFrame):
    """Speedup and efficiency against workers, per configuration and time metric, with the ideal."""
    fig = _figure(10.0, 4.5)
    ax_s, ax_e = fig.subplots(1, 2)
    names = labels(rows, exclude=("workers",))
    styles = {name: style for name, style, _ in _time_metrics({})}
    workers = sorted(scal["workers"].unique())
    ax_s.plot(workers, workers, color="black", linewidth=1, linestyle=":", label="ideal (speedup = workers, "
              "efficiency 100%)")
    ax_e.axhline(100, color="black", linewidth=1, linestyle=":")
    colours = {}
    for (metric, *_), g in scal.groupby(["metric"] + list(metrics.CONFIG_KEY), sort=False, dropna=False):
        g = g.sort_values("workers").dropna(subset=["speedup"])
        if g.empty:
            continue
        base = rows[(rows["sweep"] == g["sweep"].iloc[0]) & (rows["trial_id"] == g["trial_id"].iloc[0])]
        config_label = names[(base["sweep"].iloc[0], base["trial_id"].iloc[0])]
        colour = colours.setdefault(config_label, f"C{len(colours)}")
        label = f"{config_label} ({metric})" if config_label else metric
        ax_s.plot(g["workers"], g["speedup"], marker="o", linestyle=styles[metric], color=colour, label=label)
        ax_e.plot(g["workers"], 100 * g["efficiency"], marker="o", linestyle=styles[metric], color=colour)
    for ax in (ax_s, ax_e):
        ax.set_xlabel("workers (data-parallel processes)")
        ax.set_xticks(workers)
        ax.grid(True, alpha=0.3)
    handles, texts = ax_s.get_legend_handles_labels()
    fig.legend(handles, texts, fontsize="small", loc="outside lower center", ncols=min(3, len(handles)))
    ax_s.set_ylabel("speedup over 1 worker (x)")
    ax_s.set_title("Speedup: T(1 worker) / T(p workers)")
    ax_e.set_ylabel("scaling efficiency (%)")
    ax_e.set_ylim(0, max(110.0, 105 * float(scal["efficiency"].max(skipna=True) or 0)))
    ax_e.set_title("Efficiency: speedup / workers")
    return fig


NETWORK_FIELDS = {"bandwidth_mbps": "link bandwidth (Mbit/s)", "latency_ms": "link latency (ms, one way)"}


def swept(rows: pd.DataFrame, field: str) -> bool:
    """Whether the trials took more than one value of ``field`` (unlimited bandwidth counts as one)."""
    return rows[field].nunique(dropna=False) > 1


def plot_vs_network(rows: pd.DataFrame, field: str, targets: dict):
    """Time to target and time per epoch against the swept link parameter, one line per other setting;
    an unlimited bandwidth is drawn as a dotted level, since it has no place on the axis."""
    fig = _figure(10.0, 4.5)
    ax_t, ax_e = fig.subplots(1, 2)
    names = labels(rows, exclude=(field,))
    per_trial = []
    to_target = _time_metrics(targets)[0][2]
    for key, g in metrics.trials(rows):
        per_trial.append({"key": key, "x": g[field].iloc[0], "target": to_target(g),
                          "epoch": metrics.seconds_per_epoch(g)})
    frame = pd.DataFrame(per_trial)
    frame["series"] = [names[k] for k in frame["key"]]
    any_target = frame["target"].notna().any()
    for i, (series, g) in enumerate(frame.groupby("series", sort=True)):
        colour = f"C{i}"
        finite = g[g["x"].notna()].sort_values("x")
        for ax, col in ((ax_t, "target"), (ax_e, "epoch")):
            pts = finite.dropna(subset=[col])
            ax.plot(pts["x"], pts[col], marker="o", color=colour, label=series or None)
            for level in g[g["x"].isna()][col].dropna():
                ax.axhline(level, color=colour, linestyle=":", linewidth=1,
                           label=f"{series + ', ' if series else ''}unlimited")
    finite_x = frame["x"].dropna()
    for ax in (ax_t, ax_e):
        ax.set_xlabel(NETWORK_FIELDS[field])
        if field == "bandwidth_mbps" and len(finite_x) and finite_x.max() / finite_x.min() >= 10:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    handles, texts = ax_e.get_legend_handles_labels()
    if handles:
        fig.legend(handles, texts, fontsize="small", loc="outside lower center", ncols=min(4, len(handles)))
    ax_t.set_ylabel("time to target top-1 (s of training)")
    shown = {targets.get(k) for k in frame["key"]} - {None}
    ax_t.set_title("Time to accuracy target" + (f" ({100 * shown.pop():g}% top-1)" if len(shown) == 1 else ""))
    if not any_target:
        ax_t.set_xticks([])
        ax_t.set_yticks([])
        ax_t.text(0.5, 0.5, "no trial reached its target", transform=ax_t.transAxes, ha="center", va="center")
    ax_e.set_ylabel("training time per epoch (s)")
    ax_e.set_title("Time per epoch")
    return fig


def plot_compute_comm(rows: pd.DataFrame):
    """Training time per trial split into compute, measured communication wait, and simulated link delay."""
    order = trial_order(rows)
    names = labels(rows)
    fig = _figure(8.0, 2.2 + 0.45 * len(order))
    ax = fig.add_subplot()
    sums = [rows[(rows["sweep"] == s) & (rows["trial_id"] == t)][
        ["compute_seconds", "comm_seconds", "simulated_delay_seconds", "epoch_seconds"]].sum() for s, t in order]
    div, unit = time_unit(max(x["epoch_seconds"] for x in sums))
    y = list(range(len(order)))
    compute = [x["compute_seconds"] / div for x in sums]
    measured = [max(0.0, x["comm_seconds"] - x["simulated_delay_seconds"]) / div for x in sums]
    delay = [x["simulated_delay_seconds"] / div for x in sums]
    ax.barh(y, compute, color="C0", label="compute")
    ax.barh(y, measured, left=compute, color="C1", label="communication wait (measured)")
    ax.barh(y, delay, left=[c + m for c, m in zip(compute, measured)], color="C3", label="simulated link delay")
    for i, x in enumerate(sums):
        share = x["comm_seconds"] / x["epoch_seconds"] if x["epoch_seconds"] > 0 else math.nan
        ax.text(compute[i] + measured[i] + delay[i], i, f"  {_pct(share)} comm", va="center", fontsize="small")
    ax.set_yticks(y, [names[k] for k in order])
    ax.invert_yaxis()
    ax.set_xlabel(f"training time ({unit}, summed over epochs)")
    ax.set_title("Compute and communication per trial")
    ax.set_xlim(0, 1.2 * max(c + m + d for c, m, d in zip(compute, measured, delay)) or 1.0)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside lower center", ncols=3)
    return fig


# ---------------------------------------------------------------- the report

@dataclass
class Report:
    text: str  # what stdout shows
    tables: list[tuple[str, pd.DataFrame]]  # (title, display table)
    figures: list[tuple[str, str, bytes]]  # (file name, caption, PNG)
    notes: list[str]


def build(res: Results, target: float | None = None, budget: float | None = None) -> Report:
    """Tables, figures and notes for a results folder (nothing written)."""
    rows = res.rows
    targets, budgets = goals(res, target, budget)
    table = display(summary(res, targets, budgets))
    tables, figures, notes = [("Per-trial summary", table)], [], []

    figures.append(("accuracy_vs_time.png", "Test top-1 after each epoch against cumulative training time.",
                    png_bytes(plot_accuracy_vs_time(rows, targets, budgets))))

    if rows["workers"].nunique() < 2:
        notes.append(f"scaling plot skipped: every trial has {rows['workers'].iloc[0]} worker(s); speedup needs "
                     f"more than one worker count")
    else:
        notes += [f"scaling: {m}" for m in metrics.missing_baselines(rows)]
        scal = scaling_table(rows, targets)
        if scal.empty or scal["workers"].nunique() < 2:
            notes.append("scaling plot skipped: no configuration has a 1-worker trial and another worker count")
        else:
            tables.append(("Speedup and efficiency against 1 worker", scaling_display(scal)))
            if scal.loc[scal["metric"] == "time to target", "speedup"].isna().all():
                notes.append("speedup by time to target: not measurable (a trial of each pair did not reach "
                             "its target); time per epoch is shown")
            figures.append(("scaling.png", "Speedup and scaling efficiency against workers; solid: time to "
                            "target, dashed: time per epoch; dotted black: ideal.", png_bytes(plot_scaling(scal, rows))))

    for field, name in (("bandwidth_mbps", "bandwidth"), ("latency_ms", "latency")):
        if swept(rows, field):
            figures.append((f"time_vs_{name}.png", f"Time to target and time per epoch against link {name}.",
                            png_bytes(plot_vs_network(rows, field, targets))))

    figures.append(("compute_comm.png", "Training time per trial: compute, measured communication wait, and "
                    "the simulated link delay (part of communication).", png_bytes(plot_compute_comm(rows))))

    text = "\n\n".join(f"{title}\n{t.to_string(index=False)}" for title, t in tables)
    if notes:
        text += "\n\n" + "\n".join(f"note: {n}" for n in notes)
    return Report(text, tables, figures, notes)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;font-size:.85em;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}.note{color:#8a5300}"""


def html_page(report: Report, source: str) -> str:
    """One self-contained page: the tables, the notes and every PNG as a data URI; no external links."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>raybench report: "
             f"{html.escape(source)}</title><style>{STYLE}</style></head><body>",
             f"<h1>raybench report</h1><p>Results: <code>{html.escape(source)}</code>; generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Times are training seconds (evaluation "
             f"excluded); accuracies are test top-1.</p>"]
    for title, t in report.tables:
        parts.append(f"<h2>{html.escape(title)}</h2>{t.to_html(index=False, escape=True, border=0)}")
    for n in report.notes:
        parts.append(f"<p class='note'>Note: {html.escape(n)}</p>")
    parts.append("<h2>Plots</h2>")
    for name, caption, png in report.figures:
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, out: Path, source: str) -> list[Path]:
    """The PNGs and index.html into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, _, png in report.figures:
        (out / name).write_bytes(png)
        paths.append(out / name)
    (out / "index.html").write_text(html_page(report, source), encoding="utf-8")
    return paths + [out / "index.html"]


# ---------------------------------------------------------------- CLI

def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]; e.g. 0.94 for 94%")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be a positive, finite number of seconds")
    return v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.report", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep folder (results/<sweep>) or a folder of sweeps")
    p.add_argument("--out", help=f"folder for the PNGs and index.html (default: RESULTS_DIR/{REPORT_DIR})")
    p.add_argument("--target", type=_fraction, help="test top-1 target as a fraction, for every trial "
                                                    "(default: each trial's goal.target_top1)")
    p.add_argument("--budget", type=_seconds, help="training-time budget in seconds, for every trial "
                                                   "(default: each trial's goal.time_budget_s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = load(args.results_dir)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = build(res, args.target, args.budget)
    src = Path(args.results_dir)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / REPORT_DIR
    paths = write(report, out, str(args.results_dir))
    print(report.text)
    print(f"\nwrote {len(paths) - 1} plot(s) and {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
