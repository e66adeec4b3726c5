"""What is done with the rows afterwards: ``metrics`` (pure functions over epoch rows), the report's
``tables``, ``plots`` and HTML ``page``, the DAWNBench formats and export (``dawnbench``) and the
DAWNBench inference measurement (``inference``, the one module here that uses torch, imported lazily).

Reads results only through ``raybench.results`` (local paths and URIs alike); imports no ray.
"""
