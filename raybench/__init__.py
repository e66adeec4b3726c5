"""raybench: how distributed training on Ray scales (MLBench closed division, DAWNBench files)."""

__version__ = "0.1.0"
