"""Time-to-accuracy, accuracy-after-time, speedup and scaling efficiency: pure functions over epoch rows.

Rows are a pandas DataFrame with the columns of ``results.COLUMNS`` (one trial or many, any order).
Times are ``train_seconds``: cumulative training time without evaluation, as DAWNBench counts it.
A trial is identified by (sweep, trial_id), since one trial id can appear in several sweeps.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd

from raybench.results import TRIAL_KEY

# Trials that differ only in the number of workers: speedup compares within one such group. Every
# field a sweep's grid can vary, other than workers, belongs here (tests/test_metrics.py checks this):
# a field left out puts two 1-worker trials in one group.
CONFIG_KEY = ("sweep", "model", "depth", "version", "algorithm", "hardware", "precision", "bandwidth_mbps",
              "latency_ms", "batch_per_worker", "seed", "source")

TimeMetric = Callable[[pd.DataFrame], float | None]
# A target or a budget: one value for every trial, or one per trial keyed by (sweep, trial_id).
PerTrial = float | None | Mapping[tuple[str, str], float | None]


class MissingBaseline(ValueError):
    """Speedup needs the 1-worker trial of the same configuration, and there is none."""


def _one_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by epoch; refuses rows of more than one trial (a mixed-up time series)."""
    if rows.empty:
        return rows
    trials = rows[list(TRIAL_KEY)].drop_duplicates()
    if len(trials) > 1:
        names = ", ".join(f"{s}/{t}" for s, t in trials.itertuples(index=False))
        raise ValueError(f"expected the rows of one trial, got {len(trials)}: {names}")
    return rows.sort_values("epoch")


def _value(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def time_to_accuracy(rows: pd.DataFrame, target: float) -> float | None:
    """Training seconds at the end of the first epoch whose test top-1 is >= ``target`` (a fraction);
    None if no epoch reaches it."""
    rows = _one_trial(rows)
    hit = rows[rows["test_top1"] >= target]
    return None if hit.empty else float(hit["train_seconds"].iloc[0])


def accuracy_after_time(rows: pd.DataFrame, budget_s: float | None) -> float | None:
    """Test top-1 of the model at the end of the budget: the last epoch finished within ``budget_s``
    training seconds, or the epoch that the trial itself cut at the budget (``budget_cut``; it ends
    at most one step past it), as MLBench evaluates the final model when the time is up. An epoch
    that merely crossed the budget does not count. None if no epoch fits, or no budget."""
    if budget_s is None:
        return None
    rows = _one_trial(rows)
    cut = rows["budget_cut"].fillna(False).astype(bool) if "budget_cut" in rows else False
    within = rows[(rows["train_seconds"] <= budget_s) | cut]
    return None if within.empty else _value(within["test_top1"].iloc[-1])


def final_top1(rows: pd.DataFrame) -> float | None:
    """Test top-1 after the last epoch recorded."""
    rows = _one_trial(rows)
    return None if rows.empty else _value(rows["test_top1"].iloc[-1])


def seconds_per_epoch(rows: pd.DataFrame) -> float | None:
    """Mean training seconds per epoch (training only): a time metric that needs no accuracy target."""
    rows = _one_trial(rows)
    return None if rows.empty else float(rows["epoch_seconds"].mean())


def images_per_second(rows: pd.DataFrame) -> float | None:
    """Mean over epochs of the training throughput, all workers together."""
    rows = _one_trial(rows)
    return None if rows.empty else _value(rows["images_per_second"].mean())


def comm_share(rows: pd.DataFrame) -> float | None:
    """Fraction of training time spent waiting on gradient communication: sum comm / sum epoch seconds."""
    rows = _one_trial(rows)
    total = rows["epoch_seconds"].sum()
    return None if rows.empty or not total > 0 else float(rows["comm_seconds"].sum() / total)


def budget_cut_epoch(rows: pd.DataFrame) -> int | None:
    """The epoch the time budget cut short (training stopped during it), or None. That epoch ends
    past the budget, so accuracy_after_time counts the epoch before it."""
    rows = _one_trial(rows)
    if "budget_cut" not in rows:
        return None
    cut = rows[rows["budget_cut"].fillna(False).astype(bool)]
    return None if cut.empty else int(cut["epoch"].iloc[0])


def _per_trial(value: PerTrial, key: tuple[str, str]) -> float | None:
    """A target or budget: one number for every trial, or a mapping (sweep, trial_id) -> number."""
    if isinstance(value, Mapping):
        return value.get(key)
    return value


def trials(rows: pd.DataFrame):
    """(sweep, trial_id) and the rows of each trial, in a stable order."""
    for key, group in rows.groupby(list(TRIAL_KEY), sort=True):
        yield tuple(key), group


def summary(rows: pd.DataFrame, target: PerTrial, budget: PerTrial) -> pd.DataFrame:
    """One line per trial: workers, time to target, accuracy after the budget, final top-1, mean
    images/s, communication share. ``target``/``budget``: a number, None, or a mapping per trial."""
    out = []
    for key, g in trials(rows):
        tgt, bud = _per_trial(target, key), _per_trial(budget, key)
        g = g.sort_values("epoch")
        first = g.iloc[0]
        out.append({
            "sweep": key[0], "trial_id": key[1], "workers": int(first["workers"]),
            "bandwidth_mbps": _value(first["bandwidth_mbps"]), "latency_ms": _value(first["latency_ms"]),
            "epochs": int(g["epoch"].max()), "train_seconds": float(g["train_seconds"].iloc[-1]),
            "target_top1": tgt, "time_to_target_s": None if tgt is None else time_to_accuracy(g, tgt),
            "budget_s": bud, "top1_after_budget": accuracy_after_time(g, bud),
            "final_top1": final_top1(g), "images_per_second": images_per_second(g),
            "comm_share": comm_share(g), "budget_cut_epoch": budget_cut_epoch(g),
        })
    return pd.DataFrame(out, columns=["sweep", "trial_id", "workers", "bandwidth_mbps", "latency_ms", "epochs",
                                      "train_seconds", "target_top1", "time_to_target_s", "budget_s",
                                      "top1_after_budget", "final_top1", "images_per_second", "comm_share",
                                      "budget_cut_epoch"])


def describe_config(config: Mapping) -> str:
    """A configuration as text, for messages: 'sweep=a, model=resnet20_v1, ..., bandwidth_mbps=unlimited'."""
    parts = []
    for k in CONFIG_KEY:
        v = config[k]
        if k == "bandwidth_mbps" and (v is None or (isinstance(v, float) and math.isnan(v))):
            v = "unlimited"
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def trained_here(source) -> str:
    """The source a configuration is grouped by: emulated trials (virtual workers, trained here,
    accuracy measured) scale against the measured ones; predicted trials form their own groups."""
    return "measured" if source in (None, "emulated") or (isinstance(source, float) and math.isnan(source)) \
        else source


def _config_groups(rows: pd.DataFrame):
    """(config dict, rows) per configuration; an unlimited bandwidth (null) is a value like any other;
    emulated and measured trials are one configuration (``trained_here``)."""
    if "source" in rows:
        rows = rows.assign(source=rows["source"].map(trained_here))
    for key, group in rows.groupby(list(CONFIG_KEY), sort=True, dropna=False):
        yield dict(zip(CONFIG_KEY, key, strict=True)), group


def scaling(rows: pd.DataFrame, time_metric: TimeMetric, strict: bool = True) -> pd.DataFrame:
    """Speedup T(1 worker) / T(p workers) and efficiency speedup / p, per trial, against the 1-worker
    trial of the same configuration (CONFIG_KEY). ``time_metric`` maps one trial's rows to seconds or
    None, e.g. ``functools.partial(time_to_accuracy, target=0.8)`` or ``seconds_per_epoch``.

    A configuration without a 1-worker trial raises MissingBaseline naming it (``strict``), or is
    left out (``strict=False``; ``missing_baselines`` lists them). A time of None (target never
    reached) gives a speedup of NaN.
    """
    out = []
    for config, group in _config_groups(rows):
        times = {}
        for key, g in trials(group):
            times[key] = (int(g["workers"].iloc[0]), time_metric(g))
        base = [(k, t) for k, (w, t) in times.items() if w == 1]
        if not base:
            if strict:
                raise MissingBaseline(_missing_message(config, sorted({w for w, _ in times.values()})))
            continue
        if len(base) > 1:
            raise ValueError(f"more than one 1-worker trial for configuration {describe_config(config)}: "
                             f"{', '.join(t for (_, t), _ in base)}")
        t1 = base[0][1]
        for (_, trial_id), (workers, tp) in times.items():
            speed = t1 / tp if t1 is not None and tp is not None and tp > 0 else math.nan
            out.append(config | {"trial_id": trial_id, "workers": workers, "baseline_seconds": t1,
                                 "seconds": tp, "speedup": speed, "efficiency": speed / workers})
    cols = list(CONFIG_KEY) + ["trial_id", "workers", "baseline_seconds", "seconds", "speedup", "efficiency"]
    frame = pd.DataFrame(out, columns=cols)
    return frame.sort_values(list(CONFIG_KEY) + ["workers"], na_position="last", ignore_index=True)


def _missing_message(config: Mapping, workers: list[int]) -> str:
    return (f"no 1-worker trial for configuration {describe_config(config)} (it has workers "
            f"{', '.join(map(str, workers))}); speedup and efficiency are measured against 1 worker: "
            f"add 1 to the sweep's workers list")


def missing_baselines(rows: pd.DataFrame) -> list[str]:
    """The configurations that have no 1-worker trial, described as in MissingBaseline's message."""
    return [_missing_message(config, sorted(group["workers"].unique().tolist()))
            for config, group in _config_groups(rows) if not (group["workers"] == 1).any()]
