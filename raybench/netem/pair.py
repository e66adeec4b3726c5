"""ShapedPair: two Linux network namespaces joined by a shaped link, a Ray node in each.

``ShapedPair(rate_mbit, delay_ms)`` (Linux, root) builds, inside a ``with`` block::

    namespace rb-head-XXXXXX                         namespace rb-work-XXXXXX
    lo up, rb0 10.213.0.1/24  <== shaped link ==>    lo up, rb0 10.213.0.2/24
    Ray head node (1 CPU)                            Ray worker node (1 CPU)
    the driver (run_in_head)

Both directions of the link are shaped alike: every packet is serialised at ``rate_mbit`` (None:
no limit) behind the packets before it, then takes ``delay_ms`` to arrive. ``delay_ms`` is the
**one-way** latency, so the round trip is ``2 * delay_ms``. That is the latency of the ring model in
``raybench.worker.comm.link`` (all-reduce = 2(p-1)·latency + 2(p-1)/p·n/bandwidth): a 2-rank ring
all-reduce (reduce-scatter, then all-gather, both ranks sending at once) costs 2·delay + n/rate on
this link, so the simulated trial ``{bandwidth_mbps: R, latency_ms: D}`` corresponds to
``ShapedPair(R, D)`` running a trial with an unlimited simulated network.

Two ways to shape, picked by ``backend``:

* ``"netem"``: a veth pair, and on *both* ends ``tc qdisc ... root netem delay Dms rate Rmbit
  limit N``. Needs the kernel's ``sch_netem``.
* ``"delayline"``: where the kernel has no netem, a TUN device in each namespace and a forwarding
  process in between that applies exactly the same rule, per direction, in user space
  (``raybench.netem.delayline`` says how, and what it costs).
* ``"auto"`` (default): netem where the kernel has it, the delay line otherwise.

The queue limit is large (``LIMIT_PACKETS``) so that a burst of gradient buckets (many MB at
once on a slow link) is queued, as on a wire behind a switch with deep buffers, and never dropped.

The Ray nodes and their environment: ``raybench.netem.raynodes``. Clean-up runs on leaving the
block, on an error while building and on Ctrl-C; what it removes, and how pairs left behind by a
killed owner are reaped: ``raybench.netem.namespaces``.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from .delayline import DELAYLINE_MTU, DelayLine
from .namespaces import (
    NETNS_DIR,
    NS_PREFIX,
    NetnsError,
    available,
    default_backend,
    kill_ns_processes,
    ns_id,
    ns_pids,
    probe,
    reap_stale,
    run_cmd,
    suffix,
    write_record,
)
from .raynodes import cluster_env, parse_probe, probe_script, ray_start_commands, write_token

SUBNET = "10.213.0"  # only ever configured inside our own namespaces
PREFIX_LEN = 24
IFNAME = "rb0"  # the link's interface name: the same in both namespaces, so one GLOO_SOCKET_IFNAME fits all
LIMIT_PACKETS = 100_000  # queue limit per direction (packets queued or in flight); large: bursts are not dropped
BACKENDS = ("auto", "netem", "delayline")


def _check_shaping(rate_mbit: float | None, delay_ms: float) -> None:
    """Refuse a rate that is not positive (None: no limit) or a negative delay."""
    if rate_mbit is not None and not rate_mbit > 0:
        raise ValueError(f"rate_mbit must be > 0 or None (no limit), got {rate_mbit}")
    if not delay_ms >= 0:
        raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")


def _mbit(rate_mbit: float | None) -> str:
    return f"{rate_mbit:g}mbit"


class ShapedPair:
    """Two namespaces joined by a link shaped both ways (rate, one-way delay), Ray nodes in both.

    ``with ShapedPair(100, 5) as pair:`` then ``pair.run_in_head([...], env=pair.env)``; see the
    module's text for what is built. ``start_ray=False`` builds the shaped link only.
    """

    def __init__(self, rate_mbit: float | None, delay_ms: float = 0.0, *, backend: str = "auto",
                 start_ray: bool = True, cpus_per_node: int = 1, object_store_mb: int = 256,
                 limit: int = LIMIT_PACKETS, mtu: int | None = None, sysctls: Mapping[str, str] | None = None,
                 python: str = sys.executable, ray_timeout_s: float = 120.0) -> None:
        _check_shaping(rate_mbit, delay_ms)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.rate_mbit, self.delay_ms = rate_mbit, float(delay_ms)
        self.requested_backend = backend
        self.backend: str | None = None
        self.start_ray, self.cpus_per_node, self.object_store_mb = start_ray, cpus_per_node, object_store_mb
        self.limit, self.mtu, self.sysctls = limit, mtu, dict(sysctls or {})
        self.python, self.ray_timeout_s = python, ray_timeout_s
        tag = suffix()
        self.head_ns, self.work_ns = f"{NS_PREFIX}head-{tag}", f"{NS_PREFIX}work-{tag}"
        self.ifname = IFNAME
        self.head_ip, self.work_ip = f"{SUBNET}.1", f"{SUBNET}.2"
        self.port = 20000 + secrets.randbelow(10000)
        self.tmp: Path | None = None
        self.token_path: Path | None = None
        self._delayline: DelayLine | None = None
        self._started: list[subprocess.Popen] = []
        self._marker: Path | None = None
        self._closed = True

    # -- what callers use -----------------------------------------------------------------------

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.head_ns, self.work_ns

    @property
    def address(self) -> str:
        """The Ray cluster's address (GCS), reachable from inside the head namespace."""
        return f"{self.head_ip}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for anything that joins the cluster (the driver, ``ray`` commands)."""
        return cluster_env(self.ifname, self.token_path)

    def run_in(self, ns: str, cmd: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside namespace ``ns`` (one of ``self.namespaces``), output captured as text."""
        self._check_ns(ns)
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], env=dict(env if env is not None else self.env),
                              capture_output=kw.pop("capture_output", True), text=True, timeout=timeout,
                              check=check, **kw)

    def run_in_head(self, cmd: Sequence[str], env: Mapping[str, str] | None = None,
                    timeout: float | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
        """Run ``cmd`` (the driver: ``python -m raybench.sweep ... --address pair.address``) in the head namespace."""
        return self.run_in(self.head_ns, cmd, env, timeout, check, **kw)

    def popen_in(self, ns: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start ``cmd`` in namespace ``ns``; it is killed on clean-up if still running."""
        self._check_ns(ns)
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=dict(env if env is not None else self.env), **kw)
        self._started.append(p)
        return p

    def shape(self, rate_mbit: float | None, delay_ms: float) -> None:
        """Change the link's shaping in place (both directions); the Ray cluster keeps running."""
        _check_shaping(rate_mbit, delay_ms)
        self.rate_mbit, self.delay_ms = rate_mbit, float(delay_ms)
        if self.backend == "netem":
            for ns in self.namespaces:
                run_cmd(["tc", "-n", ns, "qdisc", "replace", "dev", self.ifname, "root", *self._netem_args()])
        elif self._delayline is None:
            raise NetnsError("the delay line is not running")
        else:
            self._delayline.reshape(self._rate_bps(), self.delay_ms / 1e3)

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes and packets each namespace's end of the link has sent and received so far."""
        out = {}
        for ns in self.namespaces:
            p = run_cmd(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", self.ifname])
            stats = json.loads(p.stdout)[0]["stats64"]
            out[ns] = {"tx_bytes": stats["tx"]["bytes"], "rx_bytes": stats["rx"]["bytes"],
                       "tx_packets": stats["tx"]["packets"], "rx_packets": stats["rx"]["packets"],
                       "tx_dropped": stats["tx"]["dropped"], "rx_dropped": stats["rx"]["dropped"]}
        return out

    def probe_cluster(self, timeout: float | None = None) -> list[dict]:
        """Wait until both Ray nodes are alive; run one task on each and return what it saw:
        node IP, GLOO_SOCKET_IFNAME in the worker process, and the interfaces it has."""
        timeout = timeout or self.ray_timeout_s
        p = self.run_in_head([self.python, "-c", probe_script(self.address, timeout)], timeout=timeout + 60)
        nodes = parse_probe(p.stdout)
        if nodes is None:
            raise NetnsError(f"probing the Ray cluster at {self.address} failed ({p.returncode}): "
                             f"{p.stderr.strip()[-3000:]}")
        return nodes

    # -- building ---------------------------------------------------------------------------------

    def __enter__(self) -> ShapedPair:
        why = available()
        if why:
            raise NetnsError(why)
        self.backend = default_backend() if self.requested_backend == "auto" else self.requested_backend
        if self.backend == "netem" and not probe()[1]:
            raise NetnsError("backend 'netem': this kernel has no netem qdisc (sch_netem); use backend 'delayline'")
        if self.backend == "delayline" and not probe()[2]:
            raise NetnsError("backend 'delayline': TUN devices (/dev/net/tun) are not usable here")
        reap_stale()  # pairs whose owner was killed (SIGKILL) before it could clean up
        self._closed = False
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
        try:
            # SIGTERM during set-up becomes an exception, so the clean-up below runs
            if _on_main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            self.tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: Ray's socket paths must fit
            self._write_marker()
            for ns in self.namespaces:
                run_cmd(["ip", "netns", "add", ns])
                self._write_marker()
                run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
                for key, value in self.sysctls.items():
                    run_cmd(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])
            if self.backend == "netem":
                self._build_veth()
            else:
                self._build_delayline()
            if self.start_ray:
                self._start_ray()
        except BaseException:
            self.close()
            raise
        finally:
            if _on_main_thread():
                for s, h in previous.items():
                    signal.signal(s, h)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_ns(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not one of this pair's namespaces {self.namespaces}")
        if self._closed:
            raise NetnsError("the pair is closed (use it inside its `with` block)")

    def _rate_bps(self) -> float:
        return 0.0 if self.rate_mbit is None else self.rate_mbit * 1e6

    def _netem_args(self) -> list[str]:
        args = ["netem", "delay", f"{self.delay_ms:g}ms"]
        if self.rate_mbit is not None:
            args += ["rate", _mbit(self.rate_mbit)]
        return args + ["limit", str(self.limit)]

    def _address(self, ns: str) -> str:
        return self.head_ip if ns == self.head_ns else self.work_ip

    def _build_veth(self) -> None:
        run_cmd(["ip", "link", "add", self.ifname, "netns", self.head_ns, "type", "veth",
                 "peer", "name", self.ifname, "netns", self.work_ns])
        for ns in self.namespaces:
            run_cmd(["ip", "-n", ns, "addr", "add", f"{self._address(ns)}/{PREFIX_LEN}", "dev", self.ifname])
            if self.mtu:
                run_cmd(["ip", "-n", ns, "link", "set", self.ifname, "mtu", str(self.mtu)])
            run_cmd(["ip", "-n", ns, "link", "set", self.ifname, "up"])
            run_cmd(["tc", "-n", ns, "qdisc", "add", "dev", self.ifname, "root", *self._netem_args()])

    def _build_delayline(self) -> None:
        self._delayline = DelayLine(self.python, [NETNS_DIR / ns for ns in self.namespaces], self.ifname,
                                    self._rate_bps(), self.delay_ms / 1e3, self.limit, self.tmp / "delayline.log")
        self._write_marker()
        self._delayline.wait_ready()
        mtu = str(self.mtu or DELAYLINE_MTU)
        for ns in self.namespaces:
            run_cmd(["ip", "-n", ns, "addr", "add", f"{self._address(ns)}/{PREFIX_LEN}", "dev", self.ifname])
            run_cmd(["ip", "-n", ns, "link", "set", self.ifname, "mtu", mtu, "txqueuelen", "10000", "up"])

    def _start_ray(self) -> None:
        self.token_path = self.tmp / "auth_token"
        write_token(self.token_path)
        commands = ray_start_commands(self.python, head_ip=self.head_ip, work_ip=self.work_ip, port=self.port,
                                      tmp=self.tmp, cpus=self.cpus_per_node, object_store_mb=self.object_store_mb)
        for ns, cmd in zip(self.namespaces, commands, strict=True):
            log = self.tmp / f"ray-start-{ns}.log"
            with open(log, "w") as f:
                p = self.popen_in(ns, cmd, stdout=f, stderr=subprocess.STDOUT)
                try:
                    rc = p.wait(self.ray_timeout_s)
                except subprocess.TimeoutExpired:
                    rc = None
            self._write_marker()
            if rc != 0:
                raise NetnsError(f"`ray start` in {ns} failed ({rc}): {log.read_text()[-3000:]}")
        self.nodes = self.probe_cluster()
        if len(self.nodes) != 2:
            raise NetnsError(f"expected 2 Ray nodes at {self.address}, found {len(self.nodes)}: {self.nodes}")

    # -- clean-up ---------------------------------------------------------------------------------

    def _write_marker(self) -> None:
        """Record the pair (again, as it grows) for ``reap_stale``; only root can write the records."""
        if os.geteuid() == 0:
            self._marker = write_record(self.head_ns, self.namespaces, self.tmp,
                                        [self._delayline.pid] if self._delayline else [])

    def close(self) -> None:
        """Kill everything in our namespaces, stop the delay line, delete namespaces, link and files.
        Safe to call twice; Ctrl-C during clean-up does not interrupt it."""
        if self._closed and self._marker is None:
            return
        self._closed = True
        with _signals_deferred():
            errors = []
            # our own children first (one may not have entered its namespace yet), then everything
            # in the namespaces, then whatever a late child put there meanwhile
            for p in self._started:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.terminate()
            for _attempt in range(2):
                for ns in self.namespaces:
                    try:
                        kill_ns_processes(ns)
                    except Exception as e:  # keep going: delete what can be deleted
                        errors.append(str(e))
                for p in self._started:
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            p.wait(5)
                if not any(ns_pids(ns) for ns in self.namespaces):
                    break
            if self._delayline is not None:
                self._delayline.stop()
                self._delayline = None
            for ns in self.namespaces:
                if ns_id(ns) is not None:
                    p = run_cmd(["ip", "netns", "del", ns], check=False)
                    if p.returncode != 0:
                        errors.append(f"ip netns del {ns}: {p.stderr.strip()}")
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            if self._marker is not None:
                self._marker.unlink(missing_ok=True)
                self._marker = None
            if errors:
                raise NetnsError("clean-up: " + "; ".join(errors))

    def __del__(self) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self.close()


def _on_main_thread() -> bool:
    """Signal handlers can only be set from the main thread."""
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    """A signal handler: SIGTERM during set-up becomes an exception, so the clean-up runs."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM during clean-up (re-delivered afterwards), so that it runs to the end."""
    if not _on_main_thread():
        yield
        return
    got: list[int] = []
    previous = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in got:
            os.kill(os.getpid(), s)
