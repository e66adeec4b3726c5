"""``python -m raybench.calibrate [--address ADDR] [--workers LIST] --out FILE``: measure the real all-reduce on
the cluster it runs on and write a fitted link profile (YAML) that a sweep file names with
``network: {profile: FILE}``.

What it measures (Ray actors, one rank per node, a plain gloo process group among them; the Ray side
is ``driver.calibrate``, the timing ``worker.comm.measure``): all-reduces of every message size
(default 1 KiB to 64 MiB in powers of 4), each ``--repeats`` times, the fastest kept (``--statistic``:
min, or median); the TCP round trip
between neighbouring ranks; ``--buckets`` all-reduces issued back to back with ``async_op=True`` as
DDP issues its buckets; and gloo over loopback on one node (its own cost without a network). What it
fits, and by which rules: ``worker.comm.fit``. The file: ``spec.profile``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import socket
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from raybench.spec.profile import ProfileError, read_profile

UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20}
DEFAULT_SIZES = ",".join(f"{4**i}K" if 4**i < 1024 else f"{4**i // 1024}M" for i in range(9))  # 1K ... 64M
LOOPBACK_MAX_BYTES = 64 * 2**10  # the loopback pass only needs the intercept: small sizes
PINGS = 50
STATISTICS = {"min": min, "median": statistics.median}


class UsageError(ValueError):
    """A bad argument: named, with what is allowed (exit 2, nothing started)."""


def parse_bytes(option: str, text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS or int(m.group(1)) * UNITS[m.group(2).upper()] < 4:
        raise UsageError(f"{option} {text!r}: not a message size (allowed: a whole number of bytes, at least 4, "
                         "with an optional K or M suffix: 1K, 256K, 64M)")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


def parse_workers(text: str) -> list[int]:
    try:
        workers = sorted({int(w) for w in text.split(",")})
    except ValueError:
        workers = []
    if not workers or workers[0] < 2:
        raise UsageError(f"--workers {text!r}: allowed: a comma-separated list of worker counts, each 2 or more")
    return workers


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raybench.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the profile file to write (YAML)")
    p.add_argument("--address", default=None, help="a running Ray cluster (HOST:PORT or auto); default: a local Ray")
    p.add_argument("--workers", default="2", help="worker counts to measure at, comma-separated (default 2)")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"message sizes, comma-separated (default {DEFAULT_SIZES})")
    p.add_argument("--repeats", type=int, default=5, help="all-reduces per size (default 5)")
    p.add_argument("--statistic", choices=sorted(STATISTICS), default="min",
                   help="of the repeats and round trips: min (default), the link's own cost, since contention on "
                        "the machines only ever adds time; median, the typical cost at the time, contention included")
    p.add_argument("--buckets", type=int, default=4, help="async all-reduces issued back to back (0: skip; default 4)")
    p.add_argument("--bucket-bytes", default="1M", help="size of each of those (default 1M, DDP's first bucket)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any one step may take (default 600)")
    args = p.parse_args(argv)
    args.workers = parse_workers(args.workers)
    args.sizes = sorted({parse_bytes("--sizes", s) for s in args.sizes.split(",")})
    args.bucket_bytes = parse_bytes("--bucket-bytes", args.bucket_bytes)
    if len(args.sizes) < 2:
        raise UsageError(f"--sizes: {len(args.sizes)} distinct size given; allowed: at least 2 (a line needs two)")
    if args.repeats < 1 or args.buckets < 0 or not args.timeout > 0:
        raise UsageError(f"--repeats {args.repeats}, --buckets {args.buckets}, --timeout {args.timeout}: allowed: "
                         "repeats 1 or more, buckets 0 or more, timeout > 0")
    if args.address and args.address != "auto" and "://" not in args.address:
        host, _, port = args.address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except (OSError, ValueError) as e:
            raise UsageError(f"--address {args.address}: nothing answers there ({e}); allowed: HOST:PORT of a "
                             "running Ray cluster, ray://HOST:PORT, auto, or none for a local Ray") from None
    out = Path(args.out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {args.out}: the folder {str(out.parent)!r} does not exist or is not writable")
    return args


def per_size(per_rank: list[dict[str, Any]], stat: str) -> dict[int, float]:
    """Per size: ``stat`` (min or median) over the repeats of the ranks' mean time of each all-reduce."""
    sizes = per_rank[0]["allreduce"]
    return {int(n): STATISTICS[stat]([statistics.mean(ts) for ts in zip(*(r["allreduce"][n] for r in per_rank),
                                                                        strict=True)]) for n in sizes}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the fit needs, from the cluster: loopback pass, then one network pass per worker count."""
    from raybench.driver.calibrate import run  # Ray only now: the arguments are good

    plan = {"repeats": args.repeats, "timeout_s": args.timeout, "pings": PINGS, "sizes": args.sizes,
            "buckets": args.buckets, "bucket_bytes": args.bucket_bytes}
    small = [n for n in args.sizes if n <= LOOPBACK_MAX_BYTES] or args.sizes[:2]
    return run(args.address, args.workers, plan, small)


def _ms(v: float) -> float:
    return round(v * 1e3, 4)


def profile(args: argparse.Namespace, got: dict[str, Any]) -> dict[str, Any]:
    """The profile's fields and provenance from the measurements (the fit is ``worker.comm.fit``)."""
    from raybench.worker.comm.fit import fit_line, fit_link
    from raybench.worker.comm.link import allreduce_seconds

    stat = STATISTICS[args.statistic]
    loop = per_size(got["loop"]["per_rank"], args.statistic)
    overhead_ms = max(0.0, fit_line(list(loop), list(loop.values())).intercept_s * 1e3)
    times = {p: per_size(r["per_rank"], args.statistic) for p, r in got["runs"].items()}
    latency_ms = stat([t for r in got["runs"].values() for hop in r["pings"] for t in hop]) * 1e3 / 2
    fit = fit_link(times, latency_ms, overhead_ms)
    fits = []
    for p, r in got["runs"].items():
        line, link, rtts = fit.lines[p], fit.link_at(p), [t for hop in r["pings"] for t in hop]
        entry = {"workers": p, "nodes": [w["ip"] for w in r["where"]], "shared_nodes": r["shared"],
                 "sizes_bytes": list(times[p]), f"{args.statistic}_s": [round(v, 6) for v in times[p].values()]}
        for other in STATISTICS.keys() - {args.statistic}:
            entry[f"{other}_s"] = [round(v, 6) for v in per_size(r["per_rank"], other).values()]
        entry |= {"residual_s": [round(v, 6) for v in line.residuals_s], "residual_rms_s": round(line.rms_s, 6),
                  "intercept_ms": _ms(line.intercept_s), "slope_ns_per_byte": round(line.slope_s_per_byte * 1e9, 4),
                  "ping_rtt_ms": {"min": _ms(min(rtts)), "median": _ms(statistics.median(rtts)), "count": len(rtts)},
                  "overhead_ms_at_workers": round(link.overhead_ms, 4)}
        if args.buckets:
            measured = stat([max(ts) for ts in zip(*(x["buckets"] for x in r["per_rank"]), strict=True)])
            modelled = args.buckets * allreduce_seconds(args.bucket_bytes, p, link)
            entry["concurrent_buckets"] = {"count": args.buckets, "bucket_bytes": args.bucket_bytes,
                                           "measured_s": round(measured, 6), "modelled_one_wire_s": round(modelled, 6),
                                           "ratio": round(measured / modelled, 4)}
        fits.append(entry)
    bw = fit.link.bandwidth_mbps
    return {
        "bandwidth_mbps": "unlimited" if bw is None else float(f"{bw:.5g}"),
        "latency_ms": round(fit.link.latency_ms, 4),
        "overhead_ms": round(fit.link.overhead_ms, 4),
        "handshake_trips": round(fit.handshake_trips, 4),
        "provenance": {
            "tool": "python -m raybench.calibrate " + " ".join(sys.argv[1:]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "backend": "gloo", "address": args.address or "local", **got["versions"],
            "repeats": args.repeats, "statistic": args.statistic, "handshake_trips_assumed": fit.h_assumed,
            "rule": (f"times: the {args.statistic} over the repeats; latency: half the {args.statistic} TCP round "
                     "trip between neighbouring ranks; bandwidth: least-squares slope of time against bytes over all "
                     "sizes; intercept: median of time - slope x bytes over the latency-bound sizes; overhead: the "
                     "intercept of gloo over loopback on one node; handshake_trips: (intercept - overhead - 2(p-1) "
                     "latency) / (2(p-1) latency). A trial at p workers charges overhead + 2(p-1) handshake_trips "
                     "latency per collective (raybench.worker.comm.fit)"),
            "loopback": {"sizes_bytes": list(loop), f"{args.statistic}_s": [round(v, 6) for v in loop.values()],
                         "intercept_ms": round(overhead_ms, 4)},
            "fits": fits,
        },
    }


def write(path: Path, prof: dict[str, Any]) -> None:
    """Write the profile (temporary name, then rename) and read it back through the sweep file's reader."""
    head = ("# raybench link profile, written by python -m raybench.calibrate; name it in a sweep file with\n"
            f"# network: {{profile: {path.name}}}\n"
            "# (fields: raybench/spec/profile.py; how they are fitted: raybench/worker/comm/fit.py)\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + yaml.safe_dump(prof, sort_keys=False, width=120, default_flow_style=None))
    tmp.replace(path)
    read_profile(path)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = arguments(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    got = measure(args)
    prof = profile(args, got)
    try:
        write(Path(args.out), prof)
    except ProfileError as e:  # the fit produced something the reader refuses: say so, keep the file to look at
        print(f"error: the written profile does not read back: {e}", file=sys.stderr)
        return 1
    print(f"bandwidth {prof['bandwidth_mbps']} Mbit/s, latency {prof['latency_ms']} ms, overhead "
          f"{prof['overhead_ms']} ms, handshake trips per ring step {prof['handshake_trips']} -> {args.out}")
    for f in prof["provenance"]["fits"]:
        b = f.get("concurrent_buckets")
        extra = f"; {b['count']} concurrent buckets: x{b['ratio']} of the one-wire model" if b else ""
        print(f"  {f['workers']} workers: intercept {f['intercept_ms']} ms, residual rms "
              f"{f['residual_rms_s'] * 1e3:.3f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
