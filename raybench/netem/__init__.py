"""A really shaped link for checking the simulated one: two Linux network namespaces, a Ray node in each.

The namespaces are joined by a link shaped in both directions (rate, one-way delay: by the kernel's
netem, or by a user-space delay line where the kernel has none), so that a trial runs over a real
network, the one that the simulated link and the replay are checked against (``tests/test_netns.py``,
``bench/network_fidelity.py``). Linux and root only. It imports the standard library alone, no torch
and no Ray: the Ray nodes and the cluster's probe are subprocesses, the delay line runs as
``python -m raybench.netem delayline``. Public names: ``ShapedPair``, ``NetnsError``, ``BACKENDS``,
``available``, ``default_backend``, ``our_namespaces``, ``ns_pids``, ``reap_stale``; from the shell,
``python -m raybench.netem check|reap``.
"""
from .namespaces import NetnsError, available, default_backend, ns_pids, our_namespaces, reap_stale
from .pair import BACKENDS, ShapedPair

__all__ = ["BACKENDS", "NetnsError", "ShapedPair", "available", "default_backend", "ns_pids", "our_namespaces",
           "reap_stale"]
