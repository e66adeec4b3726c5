"""What a trial is: the sweep file as typed, validated ``SweepSpec``/``TrialSpec`` objects, the grid
expansion and ``--smoke``, and the MLBench learning-rate schedule as pure functions.

Imports neither torch nor ray (a test checks it), so a bad sweep file is answered before anything
heavy loads. Allowed names come from their owners' registries (``raybench.models.ARCHS``,
``raybench.worker.comm.ALGORITHMS``), which are torch-free too.
"""
