"""Replay fidelity: replaying one unlimited-link run against the live simulated and the shaped link (by hand; root)

For each algorithm (allreduce over the whole grid; fp16 and PowerSGD at 100 Mbit/s, 0 ms):

1. ``bench/network_fidelity.py`` runs the 2-worker ResNet-20 trial at every (bandwidth, latency)
   point twice, on the live simulated link and on a really shaped link between two Ray nodes in
   network namespaces (see its docstring), into ``OUT/<algorithm>/results``;
2. the same trial runs once more on the simulated link at unlimited bandwidth (its step trace is
   what replay reads);
3. replay re-times that trace at every point (``raybench.analysis.prediction``).

Prints, per point, the mean epoch time of the epochs after the first on each of the three sides
and each side's ratio to the shaped link. The goal: replay and live within 3% of the shaped link.

    python bench/replay_fidelity.py --data /work/data --out /tmp/replay-fidelity     # ~40 min on 2 idle cores
    python bench/replay_fidelity.py --data /work/data --out /tmp/replay-fidelity --skip-runs   # tables again
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pandas as pd  # noqa: E402

from raybench.analysis import prediction  # noqa: E402
from raybench.results import read_results  # noqa: E402
from raybench.worker.comm.link import Link  # noqa: E402

PLAN = {"allreduce": ([1000, 100, 20], [0, 5]), "fp16": ([100], [0]), "powersgd": ([100], [0])}


def later_mean(rows: pd.DataFrame) -> float:
    later = rows[rows.epoch > 1]
    return float((later if len(later) else rows).epoch_seconds.mean())


def unlimited_run(out: Path, args: argparse.Namespace, algorithm: str) -> Path:
    """The simulated run at unlimited bandwidth whose trace replay reads; returns its sweep folder."""
    import network_fidelity as nf

    name = f"fidelity_sim_unlimited_{algorithm}"
    ns = argparse.Namespace(batch=args.batch, epochs=args.epochs, train_images=args.train_images,
                            test_images=args.test_images, algorithm=algorithm)
    (out / f"{name}.yaml").write_text(nf.sweep_yaml(name, ["unlimited"], [0], ns))
    ray_tmp = tempfile.mkdtemp(prefix="rbr-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    try:
        subprocess.run([sys.executable, "-m", "raybench.sweep", str(out / f"{name}.yaml"), "--data", args.data,
                        "--results", str(out / "results")], env=env, check=True,
                       stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return out / "results" / name


def side(results: Path, kind: str, b: float, lat: float) -> float | None:
    runs = [read_results(d) for d in sorted(results.glob(f"fidelity_{kind}_bw{b:g}_lat{lat:g}_*")) if d.is_dir()]
    return later_mean(pd.concat(runs)) if runs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("RAYBENCH_DATA"))
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--algorithms", nargs="+", default=list(PLAN), choices=list(PLAN))
    p.add_argument("--bandwidths", type=float, nargs="+", help="allreduce's grid: these Mbit/s only")
    p.add_argument("--latencies", type=float, nargs="+", help="allreduce's grid: these one-way ms only")
    p.add_argument("--repeat", type=int, default=1, help="rounds of live and shaped runs (network_fidelity's --repeat)")
    p.add_argument("--skip-runs", action="store_true", help="only the tables, from an earlier --out")
    args = p.parse_args()
    if args.bandwidths or args.latencies:
        b, lat = PLAN["allreduce"]
        PLAN["allreduce"] = (args.bandwidths or b, args.latencies or lat)
    out = Path(args.out).resolve()
    table = []
    for algorithm in args.algorithms:
        bandwidths, latencies = PLAN[algorithm]
        where = out / algorithm
        where.mkdir(parents=True, exist_ok=True)
        if not args.skip_runs:
            subprocess.run([sys.executable, str(REPO / "bench" / "network_fidelity.py"), "--data", args.data,
                            "--out", str(where), "--algorithm", algorithm, "--epochs", str(args.epochs),
                            "--train-images", str(args.train_images), "--test-images", str(args.test_images),
                            "--batch", str(args.batch), "--bandwidths", *map(str, bandwidths),
                            "--latencies", *map(str, latencies), "--repeat", str(args.repeat), "--no-link",
                            "--no-collective"], check=True)
            unlimited_run(where, args, algorithm)
        found, skipped = prediction.measured_trials(where / "results" / f"fidelity_sim_unlimited_{algorithm}")
        if not found:
            raise SystemExit(f"no traced unlimited run in {where}: {skipped}")
        (m,) = found
        for b in bandwidths:
            for lat in latencies:
                _, rows = prediction.predict(m, Link(b, lat), 2, "replay-fidelity")
                rep = later_mean(pd.DataFrame(rows))
                sim, real = side(where / "results", "sim", b, lat), side(where / "results", "real", b, lat)
                table.append({"algorithm": algorithm, "mbit_s": b, "lat_ms": lat, "live_s": sim, "replay_s": rep,
                              "shaped_s": real,
                              "live/shaped": sim / real if sim and real else None,
                              "replay/shaped": rep / real if real else None,
                              "replay/live": rep / sim if sim else None})
    df = pd.DataFrame(table)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
