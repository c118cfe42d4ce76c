"""mlops.vast: rent Vast.ai GPUs and run ML training on them; ships the vastsim simulator."""

__version__ = "0.1.0"
