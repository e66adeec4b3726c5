"""What is done with the rows afterwards: metrics (pure functions over epoch rows), the report's
tables, plots and HTML page, and the DAWNBench formats.

Reads results only through ``raybench.results``; imports no ray.
"""
