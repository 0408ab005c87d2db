"""The KD term as the training code reduced it, written once (the weighting lives in convention.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_term(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    temperature: float,
    *,
    t2: bool = True,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), reduced as the training code did, times T² unless told not."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=1)
    # Written out rather than F.kl_div(reduction=...): torch plans to change what 'mean' means, and we
    # must reproduce what the user's code did ('mean' divides by batch * classes).
    total = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    divisor = {"batchmean": s_logits.shape[0], "mean": s_logits.numel(), "sum": 1}[reduction]
    kl = total / divisor
    return kl * temperature**2 if t2 else kl
