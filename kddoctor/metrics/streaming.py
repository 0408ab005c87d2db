"""Streaming accumulators with fixed-size state: update / merge / compute / all_reduce."""

from __future__ import annotations

import numpy as np
import torch

from .functional import SAMPLE_COLUMNS, compute_pair_stats, empty_stats, merge_stats, pair_update


class PairMetrics:
    """Teacher-student metrics over a stream of batches; state is O(bins + classes), not O(samples)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.stats = empty_stats(num_classes, device)

    def update(self, t_logits: torch.Tensor, s_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Add one batch; returns its per-sample columns (still on the device)."""
        batch, columns = pair_update(t_logits, s_logits, targets, self.num_classes)
        for k, v in batch.items():
            self.stats[k] += v
        return columns

    def merge(self, other: PairMetrics) -> PairMetrics:
        self.stats = merge_stats(self.stats, other.stats)
        return self

    def all_reduce(self) -> None:
        """Sum the state over every rank of an initialised torch.distributed group."""
        import torch.distributed as dist

        for v in self.stats.values():
            dist.all_reduce(v, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        return compute_pair_stats(self.stats)

    def state(self) -> dict[str, np.ndarray]:
        """The raw statistics as numpy arrays (for reliability diagrams, per-class tables)."""
        return {k: v.detach().cpu().numpy() for k, v in self.stats.items()}


class SampleColumns:
    """Per-sample scalars gathered on the device, concatenated once at the end (no per-batch sync)."""

    names = SAMPLE_COLUMNS

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []

    def append(self, columns: torch.Tensor) -> None:
        self._chunks.append(columns)

    def finish(self) -> dict[str, np.ndarray]:
        if not self._chunks:
            return {k: np.zeros(0, dtype=np.float32) for k in self.names}
        arr = torch.cat(self._chunks).cpu().numpy()
        self._chunks = []
        return {k: arr[:, i] for i, k in enumerate(self.names)}
