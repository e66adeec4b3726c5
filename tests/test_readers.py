"""A results folder reads the same in pandas, DuckDB and Polars (and through results.read_results)."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from raybench import results
from rows import scaling_sweep


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four trials as a sweep writes them, with Ray's run state beside them as in a real sweep folder."""
    path = tmp_path_factory.mktemp("results") / "synthetic"
    scaling_sweep(path, workers=(1, 2), network={"bandwidth_mbps": [100, "unlimited"], "latency_ms": [0, 5]})
    (path / "_ray").mkdir()
    (path / "_ray" / "state.json").write_text("{}")
    return path


def test_same_rows_columns_and_aggregates(folder):
    glob = f"{folder}/*.parquet"
    pdf = pd.read_parquet(folder)
    ddb = duckdb.sql(f"select * from read_parquet('{glob}')")
    ddb_count, ddb_mean, ddb_unlimited = duckdb.sql(
        f"select count(*), avg(test_top1), count(*) filter (where bandwidth_mbps is null) "
        f"from read_parquet('{glob}')").fetchall()[0]
    plf = pl.read_parquet(glob)

    expected_columns = list(results.COLUMNS)
    assert list(pdf.columns) == ddb.columns == plf.columns == expected_columns
    n = 8 * 4  # 8 trials x 4 epochs
    assert len(pdf) == ddb_count == plf.height == n
    assert pdf["test_top1"].mean() == pytest.approx(ddb_mean) == pytest.approx(plf["test_top1"].mean())
    assert pdf["bandwidth_mbps"].isna().sum() == ddb_unlimited == plf["bandwidth_mbps"].null_count() == n // 2


def test_read_results_is_pd_read_parquet(folder):
    ours = results.read_results(folder)
    theirs = pd.read_parquet(folder)
    key = ["trial_id", "epoch"]
    pd.testing.assert_frame_equal(ours.sort_values(key, ignore_index=True), theirs.sort_values(key, ignore_index=True))


def test_per_trial_aggregate_agrees(folder):
    glob = f"{folder}/*.parquet"
    pdf = pd.read_parquet(folder).groupby("trial_id")["train_seconds"].max().sort_index()
    ddb = duckdb.sql(f"select trial_id, max(train_seconds) as t from read_parquet('{glob}') group by trial_id "
                     f"order by trial_id").df().set_index("trial_id")["t"]
    plf = (pl.read_parquet(glob).group_by("trial_id").agg(pl.col("train_seconds").max()).sort("trial_id")
           .to_pandas().set_index("trial_id")["train_seconds"])
    pd.testing.assert_series_equal(pdf, ddb, check_names=False)
    pd.testing.assert_series_equal(pdf, plf, check_names=False)
