"""A results folder holding a trial file written before the columns ``source``, ``predicted_from`` and
``simulated_hold_seconds`` existed (tests/data, written by v0.2's code) and one written today reads
whole in raybench, pandas, DuckDB and Polars, with the reader options the README gives."""
from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from raybench import results

import rows

OLD = Path(__file__).parent / "data" / "before_source_columns.parquet"
NEW = ("source", "predicted_from", "simulated_hold_seconds")


@pytest.fixture
def folder(tmp_path):
    """The old file first in name order (readers that take the first file's schema see the old one)."""
    shutil.copy(OLD, tmp_path / "a_old.parquet")
    spec = rows.trial(workers=[1])
    new = [r | {"simulated_hold_seconds": 0.5} for r in rows.epoch_rows(spec, [0.3, 0.5, 0.6])]
    rows.write(tmp_path, spec, new)
    return tmp_path


def test_the_old_file_lacks_the_new_columns():
    import pyarrow.parquet as pq

    assert not set(NEW) & set(pq.read_schema(OLD).names)


def test_raybench_reads_old_rows_as_measured_with_nulls_elsewhere(folder):
    res = results.load(folder)
    assert len(res.rows) == 5 and list(res.rows.columns) == list(results.COLUMNS)
    assert (res.rows.source == "measured").all()
    old = res.rows[res.rows.workers == 2]
    assert old.predicted_from.isna().all() and old.simulated_hold_seconds.isna().all()
    assert (res.rows[res.rows.workers == 1].simulated_hold_seconds == 0.5).all()


def test_pandas_reads_the_folder_whole_with_the_schema(folder):
    df = pd.read_parquet(folder, schema=results.SCHEMA)
    assert len(df) == 5 and set(NEW) <= set(df.columns)
    assert df.source.isna().sum() == 2 and (df.simulated_hold_seconds == 0.5).sum() == 3
    # without it pandas (pyarrow) keeps the first file's columns: the README says to pass the schema
    assert not set(NEW) & set(pd.read_parquet(folder).columns)


def test_duckdb_reads_the_folder_whole_by_name(folder):
    rel = duckdb.sql(f"select source, simulated_hold_seconds from read_parquet('{folder}/*.parquet', "
                     f"union_by_name=true)")
    got = rel.fetchall()
    assert len(got) == 5 and sorted(got, key=str).count((None, None)) == 2 and got.count(("measured", 0.5)) == 3


def test_polars_reads_the_folder_whole_with_the_schema_or_diagonally(folder):
    schema = pl.from_arrow(results.SCHEMA.empty_table()).schema
    df = pl.read_parquet(f"{folder}/*.parquet", schema=schema, missing_columns="insert")
    assert df.height == 5 and df["source"].null_count() == 2
    diag = pl.concat([pl.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed")
    assert diag.height == 5 and diag["simulated_hold_seconds"].null_count() == 2
    with pytest.raises(pl.exceptions.SchemaError):  # why the README gives the options
        pl.read_parquet(f"{folder}/*.parquet")
