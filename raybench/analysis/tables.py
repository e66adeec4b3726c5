"""The report's tables: targets and budgets per trial, the per-trial summary, speedup and efficiency,
and the text forms (units, percentages) that stdout and the HTML page show."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from raybench import results
from raybench.analysis import metrics
from raybench.results import TRIAL_KEY, Results

Key = tuple[str, str]  # (sweep, trial_id)


def goals(res: Results, target: float | None = None, budget: float | None = None) -> tuple[dict, dict]:
    """Per trial, the accuracy target and the time budget: the overrides when given, else the trial's
    ``goal.target_top1`` / ``goal.time_budget_s`` (None when its config does not say)."""
    targets, budgets = {}, {}
    for key in res.by_key:
        goal = res.config(key).get("goal", {})
        targets[key] = target if target is not None else goal.get("target_top1")
        budgets[key] = budget if budget is not None else goal.get("time_budget_s")
    return targets, budgets


def trial_order(rows: pd.DataFrame) -> list[Key]:
    """Trials sorted by configuration, then by workers, so that scaling reads down the table."""
    firsts = rows.drop_duplicates(list(TRIAL_KEY))
    firsts = firsts.sort_values(list(metrics.CONFIG_KEY) + ["workers", "trial_id"], na_position="last")
    return list(firsts[list(TRIAL_KEY)].itertuples(index=False, name=None))


def summary(res: Results, targets: dict, budgets: dict) -> pd.DataFrame:
    """metrics.summary in trial order, with each file's status (running / complete)."""
    table = metrics.summary(res.rows, targets, budgets)
    keys = list(zip(table["sweep"], table["trial_id"], strict=True))
    table["status"] = [res.by_key[k].meta.get(results.META_STATUS.decode(), "?") for k in keys]
    order = {k: i for i, k in enumerate(trial_order(res.rows))}
    table["_order"] = [order[k] for k in keys]
    return table.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def pct(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}%"


def num(x, fmt: str = ".1f", none: str = "-") -> str:
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
                   for s, c in zip(table["status"], table["budget_cut_epoch"], strict=True)],
        "target": [pct(t) for t in table["target_top1"]],
        "time to target (s)": [num(t, none="not reached" if not pd.isna(g) else "-")
                               for t, g in zip(table["time_to_target_s"], table["target_top1"], strict=True)],
        "budget (s)": [num(b, "g") for b in table["budget_s"]],
        "top-1 after budget": [pct(a) for a in table["top1_after_budget"]],
        "final top-1": [pct(a) for a in table["final_top1"]],
        "images/s": [num(x) for x in table["images_per_second"]],
        "comm share": [pct(x) for x in table["comm_share"]],
    })
    if table["sweep"].nunique() > 1:
        out.insert(0, "sweep", table["sweep"])
    return out


def time_metrics(targets: dict) -> list[tuple[str, str, Callable]]:
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
    for name, _, fn in time_metrics(targets):
        s = metrics.scaling(rows, fn, strict=False)
        s.insert(0, "metric", name)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)


def scaling_display(scal: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": scal["metric"], "trial": scal["trial_id"], "workers": scal["workers"].astype(str),
        "seconds": [num(x) for x in scal["seconds"]],
        "1-worker seconds": [num(x) for x in scal["baseline_seconds"]],
        "speedup": [num(x, ".2f") for x in scal["speedup"]],
        "efficiency": [pct(x) for x in scal["efficiency"]],
    })


def swept(rows: pd.DataFrame, field: str) -> bool:
    """Whether the trials took more than one value of ``field`` (unlimited bandwidth counts as one)."""
    return rows[field].nunique(dropna=False) > 1
