"""A results folder reads the same in pandas, DuckDB and Polars (and through results.read_results),
and the report and the DAWNBench export read it the same as a path and as a file:// URI."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from raybench import results

from rows import scaling_sweep

REPO = Path(__file__).resolve().parent.parent


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


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_and_export_read_a_file_uri_as_the_plain_path(tmp_path):
    """Must show 4 of the layered-package issue: both CLIs take file:///abs/path through results' readers."""
    folder = tmp_path / "results" / "synthetic"
    scaling_sweep(folder, workers=(1, 2), network={"bandwidth_mbps": [100, "unlimited"], "latency_ms": [0]})
    (folder / "_ray").mkdir()
    uri = f"file://{folder}"

    plain = cli("raybench.report", str(folder))  # default --out: RESULTS_DIR/_report, for both
    assert plain.returncode == 0, plain.stderr
    by_path = _files(folder / "_report")
    shutil.rmtree(folder / "_report")
    via_uri = cli("raybench.report", uri)
    assert via_uri.returncode == 0, via_uri.stderr
    by_uri = _files(folder / "_report")
    assert via_uri.stdout.replace(uri, str(folder)) == plain.stdout
    assert f"{uri}/_report/index.html" in via_uri.stdout
    assert sorted(by_uri) == sorted(by_path) == ["accuracy_vs_time.png", "compute_comm.png",
                                                 "epochs_vs_global_batch.png", "index.html", "scaling.png",
                                                 "time_vs_bandwidth.png", "tta_vs_workers.png"]

    def page(raw: bytes, source: str) -> str:  # the page names its source and the minute it was made
        return re.sub(r"generated \S+ \S+ UTC", "generated", raw.decode().replace(source, "SOURCE"))

    assert page(by_uri.pop("index.html"), uri) == page(by_path.pop("index.html"), str(folder))
    assert by_uri == by_path  # the PNGs, byte for byte

    outs = {}
    for name, source in (("path", str(folder)), ("uri", uri)):
        run = cli("raybench.dawnbench", "export", source, "--out", str(tmp_path / name), "--email", "dev@example.org")
        assert run.returncode == 0, run.stderr
        outs[name] = run.stdout.replace(str(tmp_path / name), "OUT")
    assert outs["uri"] == outs["path"] and "4 trial(s) exported" in outs["path"]
    assert _files(tmp_path / "uri") == _files(tmp_path / "path") and len(_files(tmp_path / "path")) == 8
