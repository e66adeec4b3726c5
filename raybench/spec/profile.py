"""A calibrated link profile: the YAML file ``python -m raybench.calibrate --out FILE`` writes and a sweep
file's ``network: {profile: FILE}`` names.

```yaml
bandwidth_mbps: 98.7        # Mbit/s, > 0, or 'unlimited'
latency_ms: 20.4            # one-way, >= 0
overhead_ms: 0.45           # fixed cost per collective (the backend's software path), >= 0
handshake_trips: 1.02       # optional (default 0): extra one-way trips per ring step (gloo's handshake)
provenance: {...}           # optional: how it was measured (any mapping; not read)
```

A trial at p workers charges ``Link(bandwidth_mbps, latency_ms, overhead_at(p))`` (see
``worker.comm.fit`` for what each number is and how it is fitted). A file is read like a sweep
file (safe YAML, no aliases, no key twice) and every problem names the file, the field, the value
and what is allowed. No torch, no Ray: the spec layer reads it before Ray starts.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybench.spec import yamlfile
from raybench.spec.yamlfile import shown

UNLIMITED = "unlimited"
REQUIRED = ("bandwidth_mbps", "latency_ms", "overhead_ms")
OPTIONAL = ("handshake_trips", "provenance")
NAME_CHARS = 24  # the most of a profile's name a trial id carries


class ProfileError(ValueError):
    """A bad profile file: the message names the file, the field, the value and what is allowed."""


def overhead_at(overhead_ms: float, handshake_trips: float, latency_ms: float, workers: int) -> float:
    """A profile's fixed cost per collective at ``workers``: its overhead plus the handshake's extra
    one-way trips, one per ring step (2(p-1) steps)."""
    return overhead_ms + 2 * max(workers - 1, 0) * handshake_trips * latency_ms


def profile_name(path: Path) -> str:
    """The short name a trial id carries: the file's stem, letters, digits, '.' and '-' only."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", path.stem).strip("-.")[:NAME_CHARS]
    return name or "profile"


@dataclass(frozen=True)
class LinkProfile:
    path: Path
    name: str
    bandwidth_mbps: float | None  # None: unlimited
    latency_ms: float
    overhead_ms: float
    handshake_trips: float = 0.0

    def overhead_at(self, workers: int) -> float:
        return overhead_at(self.overhead_ms, self.handshake_trips, self.latency_ms, workers)


def _number(path: Path, raw: dict[str, Any], field: str, allowed: str, positive: bool = False) -> float:
    v = raw[field]
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 if positive
                                                                                               else v >= 0)
    if not ok:
        raise ProfileError(f"{path}: field {field!r}: value {shown(v)} is not allowed (allowed: {allowed})")
    return float(v)


def read_profile(path: str | Path) -> LinkProfile:
    """Read and check a profile file; raises ProfileError naming the file, field, value and what is allowed."""
    path = Path(path)
    raw = yamlfile.read_file(path, ProfileError, missing="profile file not found (write one with python -m "
                                                         f"raybench.calibrate --out {path.name})")
    fields = ", ".join(REQUIRED)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"{type(raw).__name__} {shown(raw)}"
        raise ProfileError(f"{path}: a link profile must be a mapping with fields {fields}; got {got}")
    unknown = [k for k in raw if k not in REQUIRED + OPTIONAL]
    if unknown:
        allowed = ", ".join(REQUIRED + OPTIONAL)
        raise ProfileError(f"{path}: field {shown(unknown[0])}: unknown key (allowed: {allowed})")
    for field in REQUIRED:
        if field not in raw:
            raise ProfileError(f"{path}: field {field!r}: required but missing (a profile has {fields})")
    bw = raw["bandwidth_mbps"]
    bandwidth = None if bw == UNLIMITED else _number(path, raw, "bandwidth_mbps",
                                                     "a number of Mbit/s greater than 0, or 'unlimited'", True)
    latency = _number(path, raw, "latency_ms", "a number of milliseconds, 0 or more")
    overhead = _number(path, raw, "overhead_ms", "a number of milliseconds, 0 or more")
    trips = 0.0
    if "handshake_trips" in raw:
        trips = _number(path, raw, "handshake_trips", "a number of one-way trips per ring step, 0 or more")
    if "provenance" in raw and not isinstance(raw["provenance"], dict):
        raise ProfileError(f"{path}: field 'provenance': value {shown(raw['provenance'])} is not allowed "
                           "(allowed: a mapping)")
    return LinkProfile(path, profile_name(path), bandwidth, latency, overhead, trips)
