"""Network namespaces and what runs in them: whether this machine allows them, entering one, finding
and killing its processes, and the records that let a later run remove pairs left behind.

Clean-up never runs ``ray stop``, which kills every Ray process on the machine: it kills exactly the
processes whose network namespace is one of ours (SIGTERM, then SIGKILL), and the delay line process
the pair started, then deletes the namespaces (and with them the link) and the temporary folder. A
marker in ``/run/raybench-netns`` records each pair, so ``python -m raybench.netem reap`` removes
pairs whose owner died without cleaning up (SIGKILL).

``available()`` says why none of this can run here (``None`` when it can), for tests to skip on.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
MARKER_DIR = Path("/run/raybench-netns")
NS_PREFIX = "rb-"

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


class NetnsError(RuntimeError):
    """Building or running the shaped pair failed; the message says which step and why."""


def run_cmd(cmd: Sequence[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run an ``ip``/``tc`` command, output captured; a failure (with ``check``) is a NetnsError saying why."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p


def suffix() -> str:
    """A random suffix for namespace names, so that pairs (and probes) never collide."""
    return secrets.token_hex(3)


# ---------------------------------------------------------------------------------------------
# what this machine allows


@functools.cache
def probe() -> tuple[str | None, bool, bool]:
    """(why not, netem works, TUN works), tried once in a throwaway namespace."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}", False, False
    if os.geteuid() != 0:
        return "network namespaces and tc need root (CAP_NET_ADMIN); running as uid " f"{os.geteuid()}", False, False
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed", False, False
    ns = f"{NS_PREFIX}probe-{suffix()}"
    try:
        p = run_cmd(["ip", "netns", "add", ns], check=False)
        if p.returncode != 0:
            return f"`ip netns add` failed: {(p.stderr or p.stdout).strip()}", False, False
        netem = run_cmd(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                        check=False).returncode == 0
        tun = os.path.exists("/dev/net/tun")
        if tun:
            try:
                with in_netns(NETNS_DIR / ns):
                    os.close(open_tun("rbprobe0"))
            except OSError:
                tun = False
        if not (netem or tun):
            return "the kernel has neither the netem qdisc (sch_netem) nor TUN devices: nothing to shape with", \
                False, False
        return None, netem, tun
    finally:
        run_cmd(["ip", "netns", "del", ns], check=False)


def available() -> str | None:
    """None when ShapedPair can run here; otherwise the reason it cannot (for pytest.skip)."""
    return probe()[0]


def default_backend() -> str:
    """The backend ``"auto"`` picks: netem where the kernel has it, the delay line otherwise."""
    why, netem, _ = probe()
    if why:
        raise NetnsError(why)
    return "netem" if netem else "delayline"


# ---------------------------------------------------------------------------------------------
# entering a namespace, and a TUN device in it


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for the calls Python's os module lacks (setns, prctl)."""
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(path: os.PathLike):
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


def open_tun(name: str) -> int:
    """Create TUN device ``name`` in the current namespace; return its non-blocking fd (IP packets, no header)."""
    import fcntl  # Unix only: imported here so that this module imports anywhere (and tests skip)

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------
# the processes in a namespace


def ns_id(name: str) -> tuple[int, int] | None:
    """The identity (device, inode) of namespace ``name``; None when it does not exist."""
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
    ident = ns_id(name)
    if ident is None:
        return []
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pid_ns(int(p)) == ident]


def kill_ns_processes(name: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process in namespace ``name`` (and only those: each pid's
    namespace is checked again right before it is signalled)."""
    ident = ns_id(name)
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
    """Every namespace this package creates names with ``rb-`` (probes included)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------
# the records in /run/raybench-netns, and reaping the pairs they name


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_record(name: str, namespaces: Sequence[str], tmp: Path | None, pids: Sequence[int]) -> Path:
    """Record (atomically) a pair owned by this process: its namespaces, folder and helper processes,
    so that ``reap_stale`` can remove them if this process dies first. Returns the record's path."""
    MARKER_DIR.mkdir(parents=True, exist_ok=True)
    marker = MARKER_DIR / f"{name}.json"
    info = {"owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
            "namespaces": list(namespaces), "tmp": str(tmp) if tmp else None,
            "pids": list(pids), "pid_starts": {str(p): _proc_start(p) for p in pids}}
    part = marker.with_suffix(".tmp")
    part.write_text(json.dumps(info))
    part.replace(marker)
    return marker


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
            kill_ns_processes(ns)
            if ns_id(ns) is not None:
                run_cmd(["ip", "netns", "del", ns], check=False)
                removed.append(ns)
        if info.get("tmp"):
            shutil.rmtree(info["tmp"], ignore_errors=True)
        marker.unlink(missing_ok=True)
    return removed
