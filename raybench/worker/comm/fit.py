"""Fitting a link profile to measured all-reduce times: pure (numpy; no torch, no Ray).

What ``python -m raybench.calibrate`` measures, per worker count p: the median time of one
all-reduce at each message size, the median TCP round trip between neighbouring ranks, and the
same all-reduce between two ranks on one node over loopback. What it fits:

    t(n, p) = overhead + 2(p-1)·(1 + h)·latency + 2(p-1)/p · n / bandwidth

the ring formula of ``worker.comm.link`` with gloo's two costs of its own: a fixed ``overhead``
per collective (its software path, measured over loopback, where there is no network) and ``h``
extra one-way trips per ring step (gloo's receiver-ready handshake: a rank sends a chunk only
after its peer has said it posted the receive, so a step takes two trips, h = 1, not one).

The rules, in order (``fit_link``):

1. ``latency``: half the median TCP round trip between neighbouring ranks (given; measured).
2. ``bandwidth``: the least-squares slope of time against bytes over all sizes, per worker count
   (the large messages carry it: the link's steady rate), through 2(p-1)/p · 8 / (B·1e6) per byte;
   with several worker counts, one B fitted to all slopes. A slope of 0 or less: unlimited.
3. each worker count's intercept: the median of t - slope·n over the latency-bound sizes (those
   whose transfer term slope·n is at most 10% of t; at least the two smallest). A straight line
   fitted to all sizes would let mid-size messages (TCP windows still opening) lift it.
4. ``overhead``: the loopback intercept (given; gloo over ``lo``). On one worker count latency and
   overhead cannot be told apart from the all-reduce alone: that is why both are measured apart.
5. ``h``: least squares, over the worker counts, of intercept - overhead - 2(p-1)·latency against
   2(p-1)·latency, clamped at 0. Where 2(p-1)·latency is under ``MIN_IDENTIFIABLE_MS`` at every p
   (a LAN), h cannot be seen in the data and gloo's protocol value 1 is taken (``h_assumed``).

A trial at p workers then charges ``Link(bandwidth, latency, overhead_at(p))`` with
``overhead_at(p) = overhead + 2(p-1)·h·latency`` (``spec.profile.overhead_at``): at every calibrated
worker count the link model's intercept is the measured one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from raybench.spec.profile import overhead_at
from raybench.worker.comm.link import Link

LATENCY_BOUND = 0.10  # a size is latency-bound when its transfer term is at most this share of its time
MIN_IDENTIFIABLE_MS = 0.2  # below this 2(p-1)·latency at every p, the handshake trips are assumed, not fitted
GLOO_HANDSHAKE_TRIPS = 1.0  # gloo's protocol: one receiver-ready notification per chunk sent


@dataclass(frozen=True)
class Line:
    """One worker count's fit: seconds = intercept_s + slope_s_per_byte · bytes."""

    intercept_s: float
    slope_s_per_byte: float
    residuals_s: tuple[float, ...]  # measured minus fitted, per size (in the order given)

    @property
    def rms_s(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals_s)))) if self.residuals_s else 0.0


@dataclass(frozen=True)
class LinkFit:
    """A fitted profile: the link (its overhead the fixed part only), the handshake trips per ring step,
    and each worker count's line."""

    link: Link
    handshake_trips: float
    h_assumed: bool
    lines: dict[int, Line]

    def link_at(self, workers: int) -> Link:
        """The link a trial at ``workers`` charges: the fixed overhead plus the handshake trips at that p."""
        return Link(self.link.bandwidth_mbps, self.link.latency_ms,
                    overhead_at(self.link.overhead_ms, self.handshake_trips, self.link.latency_ms, workers))


def fit_line(nbytes: Sequence[float], seconds: Sequence[float]) -> Line:
    """Rules 2 and 3 for one worker count: the least-squares slope over all sizes, the intercept from the
    latency-bound sizes."""
    n, t = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    if n.shape != t.shape or n.size < 2 or len(set(n.tolist())) < 2:
        raise ValueError(f"need at least two distinct message sizes with one time each, got {n.size} and {t.size}")
    if np.any(n < 0) or np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise ValueError("sizes must be >= 0 bytes and times > 0 s")
    slope = float(np.polyfit(n, t, 1)[0])
    transfer = slope * n
    bound = transfer <= LATENCY_BOUND * t
    bound[np.argsort(n)[:2]] = True  # the two smallest sizes always count
    intercept = float(np.median((t - transfer)[bound]))
    return Line(intercept, slope, tuple(float(r) for r in t - (intercept + transfer)))


def fit_link(medians: Mapping[int, Mapping[int, float]], latency_ms: float, overhead_ms: float) -> LinkFit:
    """The profile from ``medians`` (worker count -> {bytes: median seconds of one all-reduce}), the
    measured one-way ``latency_ms`` and the loopback ``overhead_ms``; the rules are the module's."""
    if not medians or any(p < 2 for p in medians):
        raise ValueError(f"need all-reduce times at 2 or more workers, got worker counts {sorted(medians)}")
    if not (latency_ms >= 0 and overhead_ms >= 0):
        raise ValueError(f"latency_ms and overhead_ms must be >= 0, got {latency_ms}, {overhead_ms}")
    lines = {p: fit_line(list(m), list(m.values())) for p, m in sorted(medians.items())}
    ps = np.array(sorted(lines), dtype=float)
    slopes = np.array([lines[int(p)].slope_s_per_byte for p in ps])
    ring = 2 * (ps - 1) / ps * 8 / 1e6  # seconds per byte = ring / bandwidth_mbps
    per_mbps = float(ring @ slopes / (ring @ ring))  # least squares through the origin: 1 / bandwidth
    bandwidth = None if per_mbps <= 0 else 1 / per_mbps
    trips = 2 * (ps - 1) * latency_ms  # ms of one-way trips per collective, one per ring step
    extra = np.array([lines[int(p)].intercept_s * 1e3 for p in ps]) - overhead_ms - trips
    if np.all(trips < MIN_IDENTIFIABLE_MS):
        h, assumed = GLOO_HANDSHAKE_TRIPS, True
    else:
        h, assumed = max(0.0, float(trips @ extra / (trips @ trips))), False
    return LinkFit(Link(bandwidth, float(latency_ms), float(overhead_ms)), h, assumed, lines)
