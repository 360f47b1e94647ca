"""imbalance: training deep networks on class-imbalanced (long-tailed) 1-D signal data."""

__version__ = "0.1.0"
