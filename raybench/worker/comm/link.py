"""The link model, as pure functions (no torch): what the simulated link charges and replay re-times.

A link is (bandwidth, latency), plus a fixed cost per collective that a calibrated profile
measures (the backend's own handshake; 0 for the textbook link). One ring all-reduce of n bytes
over p workers takes overhead + 2(p-1)*latency + 2(p-1)/p * n / bandwidth (Thakur et al., 2005).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A simulated link: bandwidth in Mbit/s (None = unlimited), one-way latency in ms, and a fixed
    cost in ms per collective (a calibrated profile's; 0 otherwise)."""

    bandwidth_mbps: float | None = None
    latency_ms: float = 0.0
    overhead_ms: float = 0.0


def allreduce_seconds(nbytes: float, workers: int, link: Link) -> float:
    """Modelled time of one ring all-reduce of ``nbytes`` over ``workers`` on ``link``."""
    if workers < 1 or nbytes < 0:
        raise ValueError(f"need workers >= 1 and nbytes >= 0, got {workers}, {nbytes}")
    if workers == 1:
        return 0.0
    seconds = link.overhead_ms / 1e3 + 2 * (workers - 1) * link.latency_ms / 1e3
    if link.bandwidth_mbps is not None:
        seconds += 2 * (workers - 1) / workers * nbytes * 8 / (link.bandwidth_mbps * 1e6)
    return seconds


def link_seconds(collectives, nbytes, workers: int, link: Link):
    """Modelled time of ``collectives`` ring all-reduces carrying ``nbytes`` in all over ``workers``
    on ``link``: the sum of ``allreduce_seconds`` over them, in closed form. Arithmetic only, so
    ``collectives`` and ``nbytes`` may be numbers or numpy arrays (replay re-times whole traces)."""
    if workers < 1:
        raise ValueError(f"need workers >= 1, got {workers}")
    if workers == 1:
        return 0.0 * nbytes
    seconds = collectives * (link.overhead_ms / 1e3 + 2 * (workers - 1) * link.latency_ms / 1e3)
    if link.bandwidth_mbps is not None:
        seconds = seconds + 2 * (workers - 1) / workers * nbytes * 8 / (link.bandwidth_mbps * 1e6)
    return seconds
