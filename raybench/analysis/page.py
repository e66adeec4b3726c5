"""The report of a results folder: what it shows (``build``: tables, figures, notes), as one
self-contained HTML page (every PNG embedded as a data URI, nothing fetched: it opens offline and
can be mailed as one file), written with the PNGs into a folder (``write``; a path or a URI)."""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from raybench import results
from raybench.analysis import metrics, plots, prediction, tables


@dataclass
class Report:
    text: str  # what stdout shows
    tables: list[tuple[str, pd.DataFrame]]  # (title, display table)
    figures: list[tuple[str, str, bytes]]  # (file name, caption, PNG)
    notes: list[str]


def shows_predictions(rows: pd.DataFrame) -> bool:
    """Whether the report draws emulated or predicted points (and so needs the prediction checks)."""
    return bool(rows["source"].isin(plots.HOLLOW).any())


def build(res: results.Results, target: float | None = None, budget: float | None = None,
          checks: pd.DataFrame | None = None) -> Report:
    """Tables, figures and notes for a results folder (nothing written). ``checks``: the folder's
    measured trials predicted from each other (``prediction.checks_of``; None: nothing checked),
    whose worst error is the band drawn around emulated and predicted points."""
    rows = res.rows
    targets, budgets = tables.goals(res, target, budget)
    shown = [("Per-trial summary", tables.display(tables.summary(res, targets, budgets)))]
    figures, notes = [], []
    band = (prediction.error_band(checks if checks is not None else pd.DataFrame()) if shows_predictions(rows)
            else None)
    if band is not None:
        notes.append(f"prediction error: {band.text()}")

    figures.append(("accuracy_vs_time.png", "Test top-1 after each epoch against cumulative training time.",
                    plots.png_bytes(plots.plot_accuracy_vs_time(rows, targets, budgets))))

    if rows["workers"].nunique() < 2:
        notes.append(f"scaling plot skipped: every trial has {rows['workers'].iloc[0]} worker(s); speedup needs "
                     f"more than one worker count")
    else:
        notes += [f"scaling: {m}" for m in metrics.missing_baselines(rows)]
        scal = tables.scaling_table(rows, targets)
        if scal.empty or scal["workers"].nunique() < 2:
            notes.append("scaling plot skipped: no configuration has a 1-worker trial and another worker count")
        else:
            shown.append(("Speedup and efficiency against 1 worker", tables.scaling_display(scal)))
            if scal.loc[scal["metric"] == "time to target", "speedup"].isna().all():
                notes.append("speedup by time to target: not measurable (a trial of each pair did not reach "
                             "its target); time per epoch is shown")
            figures.append(("scaling.png", "Speedup and scaling efficiency against workers; solid: time to "
                            "target, dashed: time per epoch; dotted black: ideal; hollow: emulated or predicted"
                            + _band_caption(band) + ".", plots.png_bytes(plots.plot_scaling(scal, rows, band))))
        figures.append(("tta_vs_workers.png", "Time to target and time per epoch against workers; hollow points: "
                        "times emulated (virtual workers) or predicted (replayed), filled: measured"
                        + _band_caption(band) + ".", plots.png_bytes(plots.plot_time_vs_workers(rows, targets, band))))
        figures.append(("epochs_vs_global_batch.png", "Epochs to the target against the global batch (trained "
                        "trials: measured and emulated).",
                        plots.png_bytes(plots.plot_epochs_vs_global_batch(rows, targets))))

    for field, name in (("bandwidth_mbps", "bandwidth"), ("latency_ms", "latency")):
        if tables.swept(rows, field):
            figures.append((f"time_vs_{name}.png", f"Time to target and time per epoch against link {name}.",
                            plots.png_bytes(plots.plot_vs_network(rows, field, targets))))

    if band is not None and band.epoch is not None:
        shown.append(("Prediction error: measured trials predicted from other trials of their configuration "
                      "(python -m raybench.predict --validate)", error_table(checks)))

    figures.append(("compute_comm.png", "Training time per trial: compute, measured communication wait, and "
                    "the simulated link delay (part of communication).",
                    plots.png_bytes(plots.plot_compute_comm(rows))))

    text = "\n\n".join(f"{title}\n{t.to_string(index=False)}" for title, t in shown)
    if notes:
        text += "\n\n" + "\n".join(f"note: {n}" for n in notes)
    return Report(text, shown, figures, notes)


def _band_caption(band: prediction.ErrorBand | None) -> str:
    if band is None:
        return ""
    if band.epoch is None:
        return "; prediction error unmeasured, so no error band"
    return (f"; shaded: the measured prediction error around them, \u00b1{band.epoch:.1%} on time per epoch and "
            f"\u00b1{band.time_to_target:.1%} on time to target ({band.pairs} predictions of {band.trials} measured "
            f"trial(s) checked)")


def error_table(checks: pd.DataFrame) -> pd.DataFrame:
    """Per prediction of a measured trial: the epochs checked, the worst epoch-time error, and the
    time to target predicted and measured, as text."""
    per = checks.groupby(["predicted_from", "trial_id"], sort=False).agg(
        epochs=("epoch", "size"), worst=("error", lambda e: e.loc[e.abs().idxmax()]),
        tta_predicted=("tta_predicted_s", "first"), tta_measured=("tta_measured_s", "first"),
        tta_error=("tta_error", "first")).reset_index()
    return pd.DataFrame({
        "predicted from": per["predicted_from"], "measured trial": per["trial_id"], "epochs": per["epochs"],
        "worst epoch-time error": per["worst"].map("{:+.1%}".format),
        "time to target predicted (s)": per["tta_predicted"].map(tables.num),
        "measured (s)": per["tta_measured"].map(tables.num),
        "error": per["tta_error"].map(lambda x: "-" if x is None or pd.isna(x) else f"{x:+.1%}")})


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;font-size:.85em;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}.note{color:#8a5300}"""


def html_page(report: Report, source: str) -> str:
    """One self-contained page: the tables, the notes and every PNG as a data URI; no external links."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>raybench report: "
             f"{html.escape(source)}</title><style>{STYLE}</style></head><body>",
             f"<h1>raybench report</h1><p>Results: <code>{html.escape(source)}</code>; generated "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Times are training seconds (evaluation "
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


def write(report: Report, out: str | os.PathLike, source: str) -> list[str | Path]:
    """The PNGs and index.html into ``out`` (a local folder or a URI); returns the paths written."""
    paths = []
    for name, _, png in report.figures:
        paths.append(results.join(out, name))
        results.write_bytes(paths[-1], png)
    paths.append(results.join(out, "index.html"))
    results.write_bytes(paths[-1], html_page(report, source).encode("utf-8"))
    return paths
