"""What the driver does with Ray: start or join a cluster (``session``; lean when local: ``lean``), run
every trial as a Tune trainable around a Ray Train trainer with torch's set-up on the workers only
(``tune``, ``backend``), the per-worker entry point (``train``), and the callback that writes each
trial's Parquet file (``writer``).

With ``netem/`` and the CLIs that start Ray, the only place that imports ``ray`` (a test checks it).
"""
