"""A really shaped link for checking the simulated one: two Linux network namespaces, a Ray node in each.

``ShapedPair(rate_mbit, delay_ms)`` (Linux, root) builds, inside a ``with`` block::

    namespace rb-head-XXXXXX                         namespace rb-work-XXXXXX
    lo up, rb0 10.213.0.1/24  <== shaped link ==>    lo up, rb0 10.213.0.2/24
    Ray head node (1 CPU)                            Ray worker node (1 CPU)
    the driver (run_in_head)

Both directions of the link are shaped alike: every packet is serialised at ``rate_mbit`` (None:
no limit) behind the packets before it, then takes ``delay_ms`` to arrive. ``delay_ms`` is the
**one-way** latency, so the round trip is ``2 * delay_ms``. That is the latency of the ring model in
``raybench.network`` (all-reduce = 2(p-1)·latency + 2(p-1)/p·n/bandwidth): a 2-rank ring all-reduce
(reduce-scatter, then all-gather, both ranks sending at once) costs 2·delay + n/rate on this link,
so the simulated trial ``{bandwidth_mbps: R, latency_ms: D}`` corresponds to
``ShapedPair(R, D)`` running a trial with an unlimited simulated network.

Two ways to shape, picked by ``backend``:

* ``"netem"``: a veth pair, and on *both* ends ``tc qdisc ... root netem delay Dms rate Rmbit
  limit N``. Needs the kernel's ``sch_netem``.
* ``"delayline"``: where the kernel has no netem (``CONFIG_NET_SCH_NETEM`` unset, as on some
  VM kernels), a TUN device in each namespace and a small forwarding process in between
  (``python -m raybench.netns delayline``) that applies exactly the same rule, per direction, in
  user space. TCP and gloo see a real link: real round trips, real serialisation, real queueing.
  The TUN devices carry 64 KB packets (``DELAYLINE_MTU``), the forwarder runs SCHED_FIFO (like
  the kernel's softirq, it is not queued behind the trainers) and costs some CPU on the machine's
  own cores (about 5-10 ms per ResNet-20 step): on a small machine that is part of the "real" side.
* ``"auto"`` (default): netem where the kernel has it, the delay line otherwise.

The queue limit is large (``LIMIT_PACKETS``) so that a burst of gradient buckets (many MB at
once on a slow link) is queued, as on a wire behind a switch with deep buffers, and never dropped.

The Ray nodes use their own ``--temp-dir`` under a private temporary folder, their own
authentication token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``, shared by both nodes and
the driver: ``pair.env``), and ``GLOO_SOCKET_IFNAME=rb0`` in their environment, which their worker
processes inherit (``ShapedPair.probe_cluster`` checks this), so gloo talks over the shaped link.
Ports live in the namespaces' own network stacks and cannot collide with a Ray on the host.

Clean-up (on leaving the block, on an error while building, on Ctrl-C) never runs ``ray stop``,
which kills every Ray process on the machine: it kills exactly the processes whose network
namespace is one of ours (SIGTERM, then SIGKILL), and the delay line process it started, then
deletes the namespaces (and with them the link) and the temporary folder. A marker in
``/run/raybench-netns`` records each pair, so ``python -m raybench.netns reap`` removes pairs whose
owner died without cleaning up (SIGKILL).

``available()`` says why none of this can run here (``None`` when it can), for tests to skip on.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import heapq
import json
import os
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Mapping, Sequence

SUBNET = "10.213.0"  # only ever configured inside our own namespaces
PREFIX_LEN = 24
IFNAME = "rb0"  # the link's interface name: the same in both namespaces, so one GLOO_SOCKET_IFNAME fits all
LIMIT_PACKETS = 100_000  # queue limit per direction (packets queued or in flight); large: bursts are not dropped
DELAYLINE_MTU = 65000  # the delay line forwards whole 64 KB segments (what TSO/GRO hand a real NIC): 7x fewer
# packets than 9000-byte jumbo frames, so the forwarder takes ~3x less CPU from the trainers it shares cores with
NETNS_DIR = Path("/run/netns")
MARKER_DIR = Path("/run/raybench-netns")
NS_PREFIX = "rb-"
BACKENDS = ("auto", "netem", "delayline")

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_PR_SET_PDEATHSIG, _PR_SET_TIMERSLACK = 1, 29


class NetnsError(RuntimeError):
    """Building or running the shaped pair failed; the message says which step and why."""


# ---------------------------------------------------------------------------------------------
# what this machine allows


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p


def _suffix() -> str:
    return secrets.token_hex(3)


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[str | None, bool, bool]:
    """(why not, netem works, TUN works), tried once in a throwaway namespace."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}", False, False
    if os.geteuid() != 0:
        return "network namespaces and tc need root (CAP_NET_ADMIN); running as uid " f"{os.geteuid()}", False, False
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed", False, False
    ns = f"{NS_PREFIX}probe-{_suffix()}"
    try:
        p = _run(["ip", "netns", "add", ns], check=False)
        if p.returncode != 0:
            return f"`ip netns add` failed: {(p.stderr or p.stdout).strip()}", False, False
        netem = _run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                     check=False).returncode == 0
        tun = os.path.exists("/dev/net/tun")
        if tun:
            try:
                with _in_netns(NETNS_DIR / ns):
                    os.close(_open_tun("rbprobe0"))
            except OSError:
                tun = False
        if not (netem or tun):
            return "the kernel has neither the netem qdisc (sch_netem) nor TUN devices: nothing to shape with", \
                False, False
        return None, netem, tun
    finally:
        _run(["ip", "netns", "del", ns], check=False)


def available() -> str | None:
    """None when ShapedPair can run here; otherwise the reason it cannot (for pytest.skip)."""
    return _probe()[0]


def default_backend() -> str:
    why, netem, _ = _probe()
    if why:
        raise NetnsError(why)
    return "netem" if netem else "delayline"


# ---------------------------------------------------------------------------------------------
# namespaces and their processes


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def _in_netns(path: os.PathLike):
    """Switch the calling thread into the network namespace at ``path`` for the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(home)
        os.close(target)
        os.close(home)


def _open_tun(name: str) -> int:
    import fcntl  # Unix only: imported here so that this module imports anywhere (and tests skip)

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _ns_id(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pid_ns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def ns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (what ``ip netns pids`` lists)."""
    ident = _ns_id(name)
    if ident is None:
        return []
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pid_ns(int(p)) == ident]


def _kill_ns_processes(name: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process in namespace ``name`` (and only those: each pid's
    namespace is checked again right before it is signalled)."""
    ident = _ns_id(name)
    if ident is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        pids = ns_pids(name)
        for pid in pids:
            if _pid_ns(pid) == ident:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = ns_pids(name)
        if not pids:
            return
    if ns_pids(name):
        raise NetnsError(f"processes {ns_pids(name)} in namespace {name} survived SIGKILL")


def our_namespaces() -> list[str]:
    """Every namespace this module creates names with ``rb-`` (probes included)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def reap_stale() -> list[str]:
    """Remove pairs whose owning process is gone (it was SIGKILLed, say). Returns their namespaces."""
    removed = []
    for marker in sorted(MARKER_DIR.glob("*.json")) if MARKER_DIR.is_dir() else []:
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if _proc_start(info["owner_pid"]) == info["owner_start"]:
            continue  # its owner still runs it
        for pid in info.get("pids", []):
            if _proc_start(pid) == info.get("pid_starts", {}).get(str(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in info["namespaces"]:
            _kill_ns_processes(ns)
            if _ns_id(ns) is not None:
                _run(["ip", "netns", "del", ns], check=False)
                removed.append(ns)
        if info.get("tmp"):
            shutil.rmtree(info["tmp"], ignore_errors=True)
        marker.unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------------------------------------
# the shaped pair


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
        if rate_mbit is not None and not rate_mbit > 0:
            raise ValueError(f"rate_mbit must be > 0 or None (no limit), got {rate_mbit}")
        if not delay_ms >= 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.rate_mbit, self.delay_ms = rate_mbit, float(delay_ms)
        self.requested_backend = backend
        self.backend: str | None = None
        self.start_ray, self.cpus_per_node, self.object_store_mb = start_ray, cpus_per_node, object_store_mb
        self.limit, self.mtu, self.sysctls = limit, mtu, dict(sysctls or {})
        self.python, self.ray_timeout_s = python, ray_timeout_s
        suffix = _suffix()
        self.head_ns, self.work_ns = f"{NS_PREFIX}head-{suffix}", f"{NS_PREFIX}work-{suffix}"
        self.ifname = IFNAME
        self.head_ip, self.work_ip = f"{SUBNET}.1", f"{SUBNET}.2"
        self.port = 20000 + secrets.randbelow(10000)
        self.tmp: Path | None = None
        self.token_path: Path | None = None
        self._delayline: subprocess.Popen | None = None
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
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update({
            "RAY_AUTH_MODE": "token", "GLOO_SOCKET_IFNAME": self.ifname,
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
        })
        if self.token_path is not None:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        env.pop("RAY_AUTH_TOKEN", None)  # would win over the token file
        return env

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
        if rate_mbit is not None and not rate_mbit > 0:
            raise ValueError(f"rate_mbit must be > 0 or None, got {rate_mbit}")
        if not delay_ms >= 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.rate_mbit, self.delay_ms = rate_mbit, float(delay_ms)
        if self.backend == "netem":
            for ns in self.namespaces:
                _run(["tc", "-n", ns, "qdisc", "replace", "dev", self.ifname, "root", *self._netem_args()])
        else:
            self._delayline_command(f"{self._rate_bps()} {self.delay_ms / 1e3}")

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes and packets each namespace's end of the link has sent and received so far."""
        out = {}
        for ns in self.namespaces:
            p = _run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", self.ifname])
            stats = json.loads(p.stdout)[0]["stats64"]
            out[ns] = {"tx_bytes": stats["tx"]["bytes"], "rx_bytes": stats["rx"]["bytes"],
                       "tx_packets": stats["tx"]["packets"], "rx_packets": stats["rx"]["packets"],
                       "tx_dropped": stats["tx"]["dropped"], "rx_dropped": stats["rx"]["dropped"]}
        return out

    def probe_cluster(self, timeout: float | None = None) -> list[dict]:
        """Wait until both Ray nodes are alive; run one task on each and return what it saw:
        node IP, GLOO_SOCKET_IFNAME in the worker process, and the interfaces it has."""
        script = textwrap.dedent(f"""
            import json, os, socket, time, ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            ray.init(address={self.address!r}, log_to_driver=False)
            deadline = time.monotonic() + {timeout or self.ray_timeout_s}
            while True:
                nodes = [n for n in ray.nodes() if n["Alive"]]
                if len(nodes) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            @ray.remote(num_cpus=0)
            def look():
                return {{"ip": ray.util.get_node_ip_address(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
                        "ifaces": sorted(n for _, n in socket.if_nameindex())}}
            out = ray.get([look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote() for n in nodes])
            for n, o in zip(nodes, out):
                o["node_id"], o["resources"] = n["NodeID"], n["Resources"]
            print("PROBE " + json.dumps(out))
        """)
        p = self.run_in_head([self.python, "-c", script], timeout=(timeout or self.ray_timeout_s) + 60)
        for line in p.stdout.splitlines():
            if line.startswith("PROBE "):
                return json.loads(line[6:])
        raise NetnsError(f"probing the Ray cluster at {self.address} failed ({p.returncode}): "
                         f"{p.stderr.strip()[-3000:]}")

    # -- building ---------------------------------------------------------------------------------

    def __enter__(self) -> "ShapedPair":
        why = available()
        if why:
            raise NetnsError(why)
        self.backend = default_backend() if self.requested_backend == "auto" else self.requested_backend
        if self.backend == "netem" and not _probe()[1]:
            raise NetnsError("backend 'netem': this kernel has no netem qdisc (sch_netem); use backend 'delayline'")
        if self.backend == "delayline" and not _probe()[2]:
            raise NetnsError("backend 'delayline': TUN devices (/dev/net/tun) are not usable here")
        reap_stale()  # pairs whose owner was killed (SIGKILL) before it could clean up
        self._closed = False
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
        try:
            # SIGTERM during set-up becomes an exception, so the clean-up below runs
            if threading_is_main():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            self.tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: Ray's socket paths must fit
            self._write_marker()
            for ns in self.namespaces:
                _run(["ip", "netns", "add", ns])
                self._write_marker()
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                for key, value in self.sysctls.items():
                    _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])
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
            if threading_is_main():
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
        _run(["ip", "link", "add", self.ifname, "netns", self.head_ns, "type", "veth",
              "peer", "name", self.ifname, "netns", self.work_ns])
        for ns in self.namespaces:
            _run(["ip", "-n", ns, "addr", "add", f"{self._address(ns)}/{PREFIX_LEN}", "dev", self.ifname])
            if self.mtu:
                _run(["ip", "-n", ns, "link", "set", self.ifname, "mtu", str(self.mtu)])
            _run(["ip", "-n", ns, "link", "set", self.ifname, "up"])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", self.ifname, "root", *self._netem_args()])

    def _build_delayline(self) -> None:
        cmd = [self.python, "-m", "raybench.netns", "delayline",
               "--ns", str(NETNS_DIR / self.head_ns), "--ns", str(NETNS_DIR / self.work_ns),
               "--ifname", self.ifname, "--rate-bps", str(self._rate_bps()),
               "--delay-s", str(self.delay_ms / 1e3), "--limit", str(self.limit)]
        self._delayline = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=open(self.tmp / "delayline.log", "w"), text=True,
                                           cwd=Path(__file__).resolve().parent.parent)
        self._write_marker()
        line = self._delayline.stdout.readline().strip()
        if line != "ready":
            self._delayline.wait(5)
            raise NetnsError(f"the delay line did not start: {line!r} "
                             f"{(self.tmp / 'delayline.log').read_text()[-2000:]}")
        mtu = str(self.mtu or DELAYLINE_MTU)
        for ns in self.namespaces:
            _run(["ip", "-n", ns, "addr", "add", f"{self._address(ns)}/{PREFIX_LEN}", "dev", self.ifname])
            _run(["ip", "-n", ns, "link", "set", self.ifname, "mtu", mtu, "txqueuelen", "10000", "up"])

    def _delayline_command(self, line: str) -> None:
        if self._delayline is None or self._delayline.poll() is not None:
            raise NetnsError("the delay line is not running")
        self._delayline.stdin.write(line + "\n")
        self._delayline.stdin.flush()
        reply = self._delayline.stdout.readline().strip()
        if reply != "ok":
            raise NetnsError(f"the delay line refused {line!r}: {reply!r}")

    def _start_ray(self) -> None:
        self.token_path = self.tmp / "auth_token"
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        common = [f"--num-cpus={self.cpus_per_node}", "--num-gpus=0", "--disable-usage-stats",
                  f"--object-store-memory={self.object_store_mb * 2**20}"]
        ray = [self.python, "-m", "ray.scripts.scripts", "start"]
        steps = [
            (self.head_ns, ray + ["--head", f"--node-ip-address={self.head_ip}", f"--port={self.port}",
                                  "--include-dashboard=false", f"--temp-dir={self.tmp / 'h'}"] + common),
            (self.work_ns, ray + [f"--address={self.address}", f"--node-ip-address={self.work_ip}",
                                  f"--temp-dir={self.tmp / 'w'}"] + common),
        ]
        for ns, cmd in steps:
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
        if os.geteuid() != 0:
            return
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        self._marker = MARKER_DIR / f"{self.head_ns}.json"
        pids = [p.pid for p in ([self._delayline] if self._delayline else [])]
        info = {"owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
                "namespaces": list(self.namespaces), "tmp": str(self.tmp) if self.tmp else None,
                "pids": pids, "pid_starts": {str(p): _proc_start(p) for p in pids}}
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self._marker)

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
            for attempt in range(2):
                for ns in self.namespaces:
                    try:
                        _kill_ns_processes(ns)
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
                with contextlib.suppress(Exception):
                    self._delayline.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    self._delayline.terminate()
                try:
                    self._delayline.wait(5)
                except subprocess.TimeoutExpired:
                    self._delayline.kill()
                    self._delayline.wait(5)
                with contextlib.suppress(Exception):
                    self._delayline.stdout.close()
                self._delayline = None
            for ns in self.namespaces:
                if _ns_id(ns) is not None:
                    p = _run(["ip", "netns", "del", ns], check=False)
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


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM during clean-up (re-delivered afterwards), so that it runs to the end."""
    if not threading_is_main():
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


# ---------------------------------------------------------------------------------------------
# the delay line: user-space netem for kernels without it


def delayline(fds: tuple[int, int], rate_bps: float, delay_s: float, limit: int, control: int | None = None) -> None:
    """Forward IP packets between two TUN fds, per direction: serialise at ``rate_bps`` (0: no
    limit) behind the earlier packets, then deliver ``delay_s`` later (netem's ``delay D rate R``).
    ``control`` (a pipe) takes lines ``RATE_BPS DELAY_S``, answered ``ok`` on stdout; EOF ends it."""
    a, b = fds
    peer = {a: b, b: a}
    free_at = {a: 0.0, b: 0.0}  # when each direction's serialiser is free again
    queued = {a: 0, b: 0}  # packets per direction not yet delivered (the limit's count)
    dropped = {a: 0, b: 0}
    heap: list = []
    seq = 0
    clock = time.monotonic
    watch = [a, b] + ([control] if control is not None else [])
    pending = b""
    while True:
        timeout = max(0.0, heap[0][0] - clock()) if heap else None
        readable, _, _ = select.select(watch, [], [], timeout)
        for fd in readable:
            if fd == control:
                chunk = os.read(control, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    try:
                        rate_bps, delay_s = (float(x) for x in line.split())
                        reply = "ok"
                    except ValueError:
                        reply = f"error: expected 'RATE_BPS DELAY_S', got {line!r}"
                    if reply == "ok":
                        now = clock()
                        free_at = {k: min(v, now) for k, v in free_at.items()}
                    sys.stdout.write(reply + "\n")
                    sys.stdout.flush()
                continue
            for _ in range(256):  # drain what is there, a bounded batch at a time
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = clock()
                if queued[fd] >= limit:
                    dropped[fd] += 1
                    continue
                depart = now
                if rate_bps > 0:
                    depart = max(now, free_at[fd]) + len(pkt) * 8 / rate_bps
                    free_at[fd] = depart
                heapq.heappush(heap, (depart + delay_s, seq, fd, pkt))
                seq += 1
                queued[fd] += 1
        now = clock()
        while heap and heap[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(heap)
            queued[fd] -= 1
            with contextlib.suppress(OSError):
                os.write(peer[fd], pkt)


def _delayline_main(args: argparse.Namespace) -> int:
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the links go with the process that built them
    _libc().prctl(_PR_SET_TIMERSLACK, 1000)  # wake within ~1 us of a packet's due time, not 50 us
    with contextlib.suppress(OSError, AttributeError):  # like the kernel's softirq: ahead of the trainers
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    fds = []
    for ns in args.ns:
        with _in_netns(ns):
            fds.append(_open_tun(args.ifname))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        delayline((fds[0], fds[1]), args.rate_bps, args.delay_s, args.limit, control=sys.stdin.fileno())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raybench.netns", description=__doc__.splitlines()[0])
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
        return _delayline_main(args)
    if args.cmd == "check":
        why = available()
        print(why or f"ok: backend {default_backend()}")
        return 1 if why else 0
    removed = reap_stale()
    print("removed: " + (" ".join(removed) if removed else "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
