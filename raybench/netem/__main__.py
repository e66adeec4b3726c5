"""``python -m raybench.netem check|reap|delayline``: whether shaped pairs can run here, removing pairs
left behind, and (internal, started by ShapedPair) the delay line process."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __doc__ as package_doc
from .delayline import run_delayline
from .namespaces import available, default_backend, reap_stale
from .pair import IFNAME, LIMIT_PACKETS


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raybench.netem", description=package_doc.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("delayline", help="(internal) the user-space shaper between two namespaces' TUN devices")
    d.add_argument("--ns", action="append", required=True, help="a namespace file (/run/netns/NAME), twice")
    d.add_argument("--ifname", default=IFNAME)
    d.add_argument("--rate-bps", type=float, default=0.0)
    d.add_argument("--delay-s", type=float, default=0.0)
    d.add_argument("--limit", type=int, default=LIMIT_PACKETS)
    sub.add_parser("check", help="say whether shaped pairs can run here, and with which backend")
    sub.add_parser("reap", help="remove pairs left behind by a process that died without cleaning up")
    args = p.parse_args(argv)
    if args.cmd == "delayline":
        if len(args.ns) != 2:
            p.error("--ns must be given twice")
        return run_delayline(args.ns, args.ifname, args.rate_bps, args.delay_s, args.limit)
    if args.cmd == "check":
        why = available()
        print(why or f"ok: backend {default_backend()}")
        return 1 if why else 0
    removed = reap_stale()
    print("removed: " + (" ".join(removed) if removed else "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
