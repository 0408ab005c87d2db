"""Metric math (functional) and the streaming accumulators built on it."""

from .functional import N_BINS, compute_pair_stats, pair_update
from .streaming import PairMetrics, SampleColumns

__all__ = ["N_BINS", "PairMetrics", "SampleColumns", "compute_pair_stats", "pair_update"]
