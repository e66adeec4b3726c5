"""Replay fidelity: replaying one unlimited-link run against the live simulated and the shaped link (by hand; root)

For each algorithm (allreduce over the whole grid; fp16 and PowerSGD at 100 Mbit/s, 0 ms), in each of
``--repeat`` rounds (``OUT/<algorithm>/r<k>``):

1. ``bench/network_fidelity.py`` runs the 2-worker ResNet-20 trial at every (bandwidth, latency)
   point twice, on the live simulated link and on a really shaped link between two Ray nodes in
   network namespaces (see its docstring);
2. the same trial runs once more on the simulated link at unlimited bandwidth (its step trace is
   what replay reads), after the points in even rounds and before them in odd ones, so that the
   trace replay re-times sees the same machine as the runs it is checked against;
3. replay re-times that round's trace at every point (``raybench.analysis.prediction``).

A run's time is the mean epoch time of its epochs after the first. Prints, per point, each side's
median over the rounds and its spread (min-max), and the ratios of the medians to the shaped
link's; then how many points are within 3 % and 5 %, and one JSON line with every run's time.
The goal: replay and live within 3 % of the shaped link.

    python bench/replay_fidelity.py --data /work/data --out /tmp/replay-fidelity     # ~20 min per round, 2 cores
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


def side(results: Path, kind: str, b: float, lat: float) -> list[float]:
    """Each run's time at one point on one side (``sim``: live hook, ``real``: shaped link)."""
    return [later_mean(read_results(d)) for d in sorted(results.glob(f"fidelity_{kind}_bw{b:g}_lat{lat:g}_*"))
            if d.is_dir()]


def spread(values: list[float]) -> dict[str, float | None]:
    """Median, min and max of one side's runs at one point."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": float(pd.Series(values).median()), "min": min(values), "max": max(values)}


def rounds(where: Path) -> list[Path]:
    """The rounds' folders of one algorithm (an --out written before rounds existed: itself)."""
    return sorted(where.glob("r[0-9]*"), key=lambda d: int(d.name[1:])) or [where]


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
    p.add_argument("--repeat", type=int, default=1, help="rounds: live, shaped and unlimited (traced) runs each")
    p.add_argument("--first-round", type=int, default=0, help="number the rounds from here (more rounds into an --out)")
    p.add_argument("--skip-runs", action="store_true", help="only the tables, from an earlier --out")
    args = p.parse_args()
    if args.bandwidths or args.latencies:
        b, lat = PLAN["allreduce"]
        PLAN["allreduce"] = (args.bandwidths or b, args.latencies or lat)
    out = Path(args.out).resolve()
    if not args.skip_runs:
        for k in range(args.first_round, args.first_round + args.repeat):
            for algorithm in args.algorithms:
                bandwidths, latencies = PLAN[algorithm]
                where = out / algorithm / f"r{k}"
                where.mkdir(parents=True, exist_ok=True)
                if k % 2:
                    unlimited_run(where, args, algorithm)
                subprocess.run([sys.executable, str(REPO / "bench" / "network_fidelity.py"), "--data", args.data,
                                "--out", str(where), "--algorithm", algorithm, "--epochs", str(args.epochs),
                                "--train-images", str(args.train_images), "--test-images", str(args.test_images),
                                "--batch", str(args.batch), "--bandwidths", *map(str, bandwidths),
                                "--latencies", *map(str, latencies), "--repeat", "1", "--no-link",
                                "--no-collective"], check=True)
                if not k % 2:
                    unlimited_run(where, args, algorithm)
    table, runs = [], []
    for algorithm in args.algorithms:
        bandwidths, latencies = PLAN[algorithm]
        per = {(b, lat): {"live": [], "replay": [], "shaped": []} for b in bandwidths for lat in latencies}
        for where in rounds(out / algorithm):
            found, skipped = prediction.measured_trials(where / "results" / f"fidelity_sim_unlimited_{algorithm}")
            if not found:
                print(f"no traced unlimited run in {where}: {skipped}", file=sys.stderr)
            for (b, lat), sides in per.items():
                res = where / "results"
                got = {"live": side(res, "sim", b, lat), "shaped": side(res, "real", b, lat),
                       "replay": [later_mean(pd.DataFrame(prediction.predict(m, Link(b, lat), 2, "replay-fidelity")[1]))
                                  for m in found]}
                for k, v in got.items():
                    sides[k] += v
                runs.append({"algorithm": algorithm, "round": where.name, "mbit_s": b, "lat_ms": lat} | got)
        for (b, lat), sides in per.items():
            live, rep, real = (spread(sides[k]) for k in ("live", "replay", "shaped"))

            def ratio(x: dict, y: dict) -> float | None:
                return x["median"] / y["median"] if x["median"] and y["median"] else None

            table.append({"algorithm": algorithm, "mbit_s": b, "lat_ms": lat, "n": len(sides["shaped"]),
                          "live_s": live["median"], "live_min": live["min"], "live_max": live["max"],
                          "replay_s": rep["median"], "replay_min": rep["min"], "replay_max": rep["max"],
                          "shaped_s": real["median"], "shaped_min": real["min"], "shaped_max": real["max"],
                          "live/shaped": ratio(live, real), "replay/shaped": ratio(rep, real),
                          "replay/live": ratio(rep, live)})
    df = pd.DataFrame(table)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for col in ("live/shaped", "replay/shaped"):
        x = df[col].dropna()
        print(f"{col}: {int(((x - 1).abs() <= 0.03).sum())} of {len(x)} points within 3 %, "
              f"{int(((x - 1).abs() <= 0.05).sum())} within 5 % (ratios of the medians over the rounds)")
    print(json.dumps({"points": table, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
