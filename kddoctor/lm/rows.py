"""The rows the fine-tuning probes work on, sampled during the main pass: order-invariant, one read.

Each row (cut to its first `tokens` positions, kept only when it counts a token) gets a seeded hash of
its token ids; the `size` rows with the smallest hashes are kept. The sample is the same however the
loader orders its batches (a length-sorted loader gives the same rows as a shuffled one), costs no
second read (a one-shot stream is probed too), and holds at most `size` rows at any time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics.tokens import IGNORE

FILLS = (0, False, IGNORE)  # padding of ids, attention mask and labels
_DTYPES = (torch.int64, torch.bool, torch.int64)
PRIME = 2**31 - 1  # the hash's modulus (the weights lie below it)


class RowSample:
    def __init__(self, size: int, tokens: int, seed: int = 0) -> None:
        self.size, self.tokens = size, tokens
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.randint(1, 2**31 - 1, (tokens,), generator=gen, dtype=torch.int64)
        self.keys = torch.empty(0, dtype=torch.int64)
        self.rows: tuple[torch.Tensor, ...] = tuple(torch.empty(0, tokens, dtype=t) for t in _DTYPES)

    def add(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        """One host-side batch [B, L] (a few integer ops per token; never on the device)."""
        if self.size <= 0:
            return
        cut = [v[:, : self.tokens].cpu() for v in (ids, mask, labels)]  # a loader may hand device tensors
        keep = (cut[2][:, 1:] != IGNORE).any(1)
        if not keep.any():
            return
        cut = [v[keep] for v in cut]
        width = cut[0].shape[1]
        cut = [
            F.pad(v, (0, self.tokens - width), value=fill).to(d)
            for v, fill, d in zip(cut, FILLS, _DTYPES, strict=True)
        ]
        # a content hash: where each row lands does not depend on where the loader put it. Reduced modulo
        # a prime, the seeded weighted sum is a universal hash (each term is reduced first, so no sum
        # overflows int64 for ids below 2^32); left unreduced it grew with the ids, and the smallest keys
        # were the rows of the smallest ids (whitespace bytes, a BPE's most frequent tokens)
        keys = ((((cut[0] + 1) * self.weights) % PRIME).sum(1) + width) % PRIME
        keys = torch.cat([self.keys, keys])
        rows = [torch.cat([a, b]) for a, b in zip(self.rows, cut, strict=True)]
        order = torch.argsort(keys, stable=True)[: self.size]
        self.keys, self.rows = keys[order], tuple(r[order] for r in rows)

    def all_gather(self) -> None:
        """Under torchrun: every rank's rows, merged into the same bottom-k (as one process would keep)."""
        from .._dist import all_gather

        parts = all_gather((self.keys, self.rows))
        keys = torch.cat([k for k, _ in parts])
        rows = [torch.cat([r[i] for _, r in parts]) for i in range(3)]
        order = torch.argsort(keys, stable=True)[: self.size]
        self.keys, self.rows = keys[order], tuple(r[order] for r in rows)

    def tensors(self) -> tuple[torch.Tensor, ...] | None:
        """(ids, mask, labels) [N, L'] trimmed to the longest kept row; None when no row counts a token."""
        if not len(self.keys):
            return None
        used = self.rows[1] | (self.rows[2] != IGNORE)  # attended or counted positions
        width = int(used.nonzero()[:, 1].max()) + 1
        return tuple(r[:, :width] for r in self.rows)
