"""What this machine offers a local Ray, known before it starts and without torch or ray: its CPUs
(``--num-cpus``, less ``--reserve-cpus``) and its GPUs, as the sweep CLI checks trials against them."""
from __future__ import annotations

import ctypes
import os


def local_cpus(num_cpus: int | None = None, reserve: int = 0) -> int:
    """The CPUs a local Ray gives the trials: ``--num-cpus`` or this machine's, less those reserved for
    Ray's own processes (``--reserve-cpus``)."""
    return (num_cpus or os.cpu_count() or 1) - reserve


def local_capacity(num_cpus: int | None = None, reserve: int = 0) -> list[dict[str, float]]:
    """What a local in-process Ray will have, known before it starts: one node (``local_cpus``)."""
    return [{"CPU": float(local_cpus(num_cpus, reserve)), "GPU": float(local_gpus())}]


def local_gpus() -> int:
    """The GPUs a local Ray counts, the way Ray 2.60 counts them (NVML's device count, at most as
    many as CUDA_VISIBLE_DEVICES names), through the NVML library itself: no torch, no ray."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        count = ctypes.c_uint(0)
        if nvml.nvmlInit_v2() != 0:
            return 0
        try:
            found = count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
        finally:
            nvml.nvmlShutdown()
    except (OSError, AttributeError):  # no NVIDIA driver on this machine
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        found = min(found, 0 if visible in ("", "NoDevFiles") else len(visible.split(",")))
    return found
