"""The report's plots, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state):
accuracy against time, speedup and efficiency, time against the swept link parameter, and the
compute/communication split per trial. Each function returns a Figure; ``png_bytes`` renders it."""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import pandas as pd

from raybench.analysis import metrics
from raybench.analysis.tables import Key, bandwidth_text, pct, time_metrics, trial_order
from raybench.results import SOURCE_EMULATED, SOURCE_PREDICTED, TRIAL_KEY


def _figure(width: float = 8.0, height: float = 4.8):
    from matplotlib.figure import Figure  # object API: no pyplot state, Agg canvas on savefig

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


VARYING = ("sweep", "model", "algorithm", "hardware", "precision", "workers", "bandwidth_mbps", "latency_ms",
           "batch_per_worker", "seed", "source")


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
    firsts = rows.drop_duplicates(list(TRIAL_KEY))
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


def line_style(i: int) -> dict[str, str]:
    """Colour and dash for the i-th line: ten colours, then the same colours dashed, dotted, ..."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", "-.", ":")[(i // 10) % 4]}


def _trial_rows(rows: pd.DataFrame, key: Key) -> pd.DataFrame:
    return rows[(rows["sweep"] == key[0]) & (rows["trial_id"] == key[1])]


def plot_accuracy_vs_time(rows: pd.DataFrame, targets: dict, budgets: dict):
    """Test top-1 after each epoch against cumulative training time, one line per trial."""
    fig = _figure()
    ax = fig.add_subplot()
    div, unit = time_unit(rows["train_seconds"].max())
    names = labels(rows)
    for i, key in enumerate(trial_order(rows)):
        g = _trial_rows(rows, key).sort_values("epoch")
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


HOLLOW = (SOURCE_EMULATED, SOURCE_PREDICTED)  # points whose times are not measured: drawn hollow


def _hollow(rows: pd.DataFrame) -> dict[Key, bool]:
    """Per trial: whether its times are predicted (replayed) or emulated (virtual workers)."""
    firsts = rows.drop_duplicates(list(TRIAL_KEY))
    return {(r["sweep"], r["trial_id"]): r["source"] in HOLLOW for _, r in firsts.iterrows()}


def _points(ax, g: pd.DataFrame, x: str, y: str, colour: str, label: str | None, linestyle: str = "-") -> None:
    """A line through ``g``'s points, measured ones filled, emulated or predicted ones (``hollow``) hollow."""
    pts = g.dropna(subset=[y]).sort_values(x)
    if pts.empty:
        return
    ax.plot(pts[x], pts[y], color=colour, linestyle=linestyle, label=label or None)
    for hollow, part in pts.groupby("hollow"):
        ax.scatter(part[x], part[y], s=22, zorder=3, edgecolors=colour, linewidths=1.2,
                   facecolors="none" if hollow else colour)


BAND_GID = "error band"  # the artists of the measured-error band (tests find them by this)


def _band(ax, g: pd.DataFrame, x: str, y: str, colour: str, low: float, high: float, label: str | None) -> bool:
    """Shade ``low`` x y to ``high`` x y around ``g``'s hollow (emulated or predicted) points;
    whether there were any."""
    pts = g[g["hollow"]].dropna(subset=[y]).sort_values(x)
    if pts.empty:
        return False
    lo, hi = pts[y] * low, pts[y] * high
    if len(pts) == 1:  # one point: a bar, since a band needs two
        ax.vlines(pts[x], lo, hi, colors=colour, linewidth=6, alpha=0.25, gid=BAND_GID, label=label)
    else:
        ax.fill_between(pts[x], lo, hi, color=colour, alpha=0.15, linewidth=0, gid=BAND_GID, label=label)
    return True


def band_label(rel: float, what: str) -> str:
    return f"band, {what}: \u00b1{rel:.1%} (measured error)"


def _workers_axis(ax, workers: Sequence[int]) -> None:
    if max(workers) / min(workers) >= 16:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(workers), [str(w) for w in workers])
    ax.set_xlabel("workers (data-parallel; emulated and predicted points hollow)")
    ax.grid(True, alpha=0.3)


def plot_scaling(scal: pd.DataFrame, rows: pd.DataFrame, band=None):
    """Speedup and efficiency against workers, per configuration and time metric, with the ideal;
    ``band`` (``prediction.ErrorBand``): emulated and predicted points shaded from S/(1+e) to
    S/(1-e), e its error on the time (per epoch, or to target) that the speedup divides."""
    fig = _figure(10.0, 4.5)
    ax_s, ax_e = fig.subplots(1, 2)
    names = labels(rows, exclude=("workers",))
    styles = {name: style for name, style, _ in time_metrics({})}
    workers = sorted(scal["workers"].unique())
    ax_s.plot(workers, workers, color="black", linewidth=1, linestyle=":", label="ideal (speedup = workers, "
              "efficiency 100%)")
    ax_e.axhline(100, color="black", linewidth=1, linestyle=":")
    colours = {}
    hollow = _hollow(rows)
    for (metric, *_), g in scal.groupby(["metric"] + list(metrics.CONFIG_KEY), sort=False, dropna=False):
        g = g.sort_values("workers").dropna(subset=["speedup"])
        if g.empty:
            continue
        g = g.assign(hollow=[hollow.get((s, t), False) for s, t in zip(g["sweep"], g["trial_id"], strict=True)],
                     efficiency_pct=100 * g["efficiency"])
        config_label = names[(g["sweep"].iloc[0], g["trial_id"].iloc[0])]
        colour = colours.setdefault(config_label, f"C{len(colours) % 10}")
        label = f"{config_label} ({metric})" if config_label else metric
        _points(ax_s, g, "workers", "speedup", colour, label, styles[metric])
        _points(ax_e, g, "workers", "efficiency_pct", colour, None, styles[metric])
        rel = None if band is None else band.time_to_target if metric == "time to target" else band.epoch
        if rel is not None and rel < 1:
            for ax, col in ((ax_s, "speedup"), (ax_e, "efficiency_pct")):
                _band(ax, g, "workers", col, colour, 1 / (1 + rel), 1 / (1 - rel), None)
    for ax in (ax_s, ax_e):
        _workers_axis(ax, workers)
    if max(workers) / min(workers) >= 16:
        ax_s.set_yscale("log", base=2)
    handles, texts = ax_s.get_legend_handles_labels()
    fig.legend(handles, texts, fontsize="small", loc="outside lower center", ncols=min(3, len(handles)))
    ax_s.set_ylabel("speedup over 1 worker (x)")
    ax_s.set_title("Speedup: T(1 worker) / T(p workers)")
    ax_e.set_ylabel("scaling efficiency (%)")
    ax_e.set_ylim(0, max(110.0, 105 * float(scal["efficiency"].max(skipna=True) or 0)))
    ax_e.set_title("Efficiency: speedup / workers")
    return fig


NETWORK_FIELDS = {"bandwidth_mbps": "link bandwidth (Mbit/s)", "latency_ms": "link latency (ms, one way)"}


def plot_vs_network(rows: pd.DataFrame, field: str, targets: dict):
    """Time to target and time per epoch against the swept link parameter, one line per other setting;
    an unlimited bandwidth is drawn as a dotted level, since it has no place on the axis."""
    fig = _figure(10.0, 4.5)
    ax_t, ax_e = fig.subplots(1, 2)
    names = labels(rows, exclude=(field,))
    per_trial = []
    to_target = time_metrics(targets)[0][2]
    for key, g in metrics.trials(rows):
        per_trial.append({"key": key, "x": g[field].iloc[0], "target": to_target(g),
                          "epoch": metrics.seconds_per_epoch(g)})
    frame = pd.DataFrame(per_trial)
    frame["series"] = [names[k] for k in frame["key"]]
    sources = rows.drop_duplicates(list(TRIAL_KEY)).set_index(list(TRIAL_KEY))["source"]
    frame["predicted"] = [sources.get(k) == "predicted" for k in frame["key"]]
    any_target = frame["target"].notna().any()
    for i, (series, g) in enumerate(frame.groupby("series", sort=True)):
        colour = f"C{i}"
        finite = g[g["x"].notna()].sort_values("x")
        hollow = bool(g["predicted"].all())  # predicted (replayed): hollow markers, dashed line
        for ax, col in ((ax_t, "target"), (ax_e, "epoch")):
            pts = finite.dropna(subset=[col])
            ax.plot(pts["x"], pts[col], marker="o", color=colour, label=series or None,
                    markerfacecolor="none" if hollow else colour, linestyle="--" if hollow else "-")
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
    sums = [_trial_rows(rows, key)[["compute_seconds", "comm_seconds", "simulated_delay_seconds",
                                    "epoch_seconds"]].sum() for key in order]
    div, unit = time_unit(max(x["epoch_seconds"] for x in sums))
    y = list(range(len(order)))
    compute = [x["compute_seconds"] / div for x in sums]
    measured = [max(0.0, x["comm_seconds"] - x["simulated_delay_seconds"]) / div for x in sums]
    delay = [x["simulated_delay_seconds"] / div for x in sums]
    ax.barh(y, compute, color="C0", label="compute")
    ax.barh(y, measured, left=compute, color="C1", label="communication wait (measured)")
    ax.barh(y, delay, left=[c + m for c, m in zip(compute, measured, strict=True)], color="C3",
            label="simulated link delay")
    for i, x in enumerate(sums):
        share = x["comm_seconds"] / x["epoch_seconds"] if x["epoch_seconds"] > 0 else math.nan
        ax.text(compute[i] + measured[i] + delay[i], i, f"  {pct(share)} comm", va="center", fontsize="small")
    ax.set_yticks(y, [names[k] for k in order])
    ax.invert_yaxis()
    ax.set_xlabel(f"training time ({unit}, summed over epochs)")
    ax.set_title("Compute and communication per trial")
    ax.set_xlim(0, 1.2 * max(c + m + d for c, m, d in zip(compute, measured, delay, strict=True)) or 1.0)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside lower center", ncols=3)
    return fig


def plot_time_vs_workers(rows: pd.DataFrame, targets: dict, band=None):
    """Time to target and time per epoch against workers, one line per configuration (and link);
    emulated (virtual workers) and predicted points hollow, shaded by ``band``
    (``prediction.ErrorBand``: the measured error, +-e around each) where it was measured."""
    fig = _figure(10.0, 4.5)
    ax_t, ax_e = fig.subplots(1, 2)
    names = labels(rows, exclude=("workers", "source", "batch_per_worker"))
    hollow = _hollow(rows)
    to_target = time_metrics(targets)[0][2]
    frame = pd.DataFrame([{"series": names[key], "workers": int(g["workers"].iloc[0]), "target": to_target(g),
                           "epoch": metrics.seconds_per_epoch(g), "hollow": hollow[key]}
                          for key, g in metrics.trials(rows)])
    rel = {"target": None if band is None else band.time_to_target, "epoch": None if band is None else band.epoch}
    labelled = set()  # one legend entry per panel's band
    for i, (series, g) in enumerate(frame.groupby("series", sort=True)):
        for ax, col in ((ax_t, "target"), (ax_e, "epoch")):
            _points(ax, g, "workers", col, line_style(i)["color"], series if ax is ax_e else None,
                    line_style(i)["linestyle"])
            if rel[col] is not None:
                what = "to target" if col == "target" else "per epoch"
                if _band(ax, g, "workers", col, line_style(i)["color"], max(1 - rel[col], 0.01), 1 + rel[col],
                         None if col in labelled else band_label(rel[col], what)):
                    labelled.add(col)
    for ax in (ax_t, ax_e):
        _workers_axis(ax, sorted(frame["workers"].unique()))
        ax.set_yscale("log")
    if frame["target"].isna().all():
        ax_t.text(0.5, 0.5, "no trial reached its target", transform=ax_t.transAxes, ha="center", va="center")
    ax_t.set_ylabel("time to target top-1 (s of training)")
    ax_t.set_title("Time to accuracy target against workers")
    ax_e.set_ylabel("training time per epoch (s)")
    ax_e.set_title("Time per epoch against workers")
    (handles, texts), (t_handles, t_texts) = ax_e.get_legend_handles_labels(), ax_t.get_legend_handles_labels()
    handles, texts = [*handles, *t_handles], [*texts, *t_texts]
    if band is not None and band.epoch is None and frame["hollow"].any():
        ax_e.text(0.02, 0.02, "error unmeasured: no band", transform=ax_e.transAxes, fontsize="small")
    if handles:
        fig.legend(handles, texts, fontsize="small", loc="outside lower center", ncols=min(3, len(handles)))
    return fig


def epochs_to_target(rows: pd.DataFrame, target: float | None) -> int | None:
    """The first epoch whose test top-1 reaches ``target`` (one trial's rows), or None."""
    hit = rows[rows["test_top1"] >= target].sort_values("epoch") if target is not None else rows.iloc[0:0]
    return None if hit.empty else int(hit["epoch"].iloc[0])


def plot_epochs_vs_global_batch(rows: pd.DataFrame, targets: dict):
    """The large-batch effect: epochs to the target against the global batch, from the trials that
    trained (measured and emulated; a predicted trial's accuracy is another trial's). The link does
    not change the arithmetic, so each configuration's global batch is one point."""
    fig = _figure()
    ax = fig.add_subplot()
    trained = rows[~rows["source"].isin(["predicted"])]
    names = labels(trained, exclude=("workers", "source", "bandwidth_mbps", "latency_ms", "batch_per_worker"))
    hollow = _hollow(trained)
    frame = pd.DataFrame([{"series": names[key], "batch": int(g["global_batch"].iloc[0]), "hollow": hollow[key],
                           "epochs": epochs_to_target(g, targets.get(key))} for key, g in metrics.trials(trained)])
    frame = frame.dropna(subset=["epochs"]).drop_duplicates(["series", "batch"])
    for i, (series, g) in enumerate(frame.groupby("series", sort=True)):
        _points(ax, g, "batch", "epochs", line_style(i)["color"], series, line_style(i)["linestyle"])
    if frame.empty:
        ax.text(0.5, 0.5, "no trial reached its target", transform=ax.transAxes, ha="center", va="center")
    else:
        batches = sorted(frame["batch"].unique())
        if max(batches) / min(batches) >= 16:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    shown = {targets.get(k) for k in _hollow(trained)} - {None}
    ax.set_xlabel("global batch (images per step; emulated points hollow)")
    ax.set_ylabel("epochs to target")
    ax.set_title("Epochs to the accuracy target against global batch"
                 + (f" ({100 * shown.pop():g}% top-1)" if len(shown) == 1 else ""))
    ax.grid(True, alpha=0.3)
    return fig
