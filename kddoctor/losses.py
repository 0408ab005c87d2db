"""The KD term as the training code reduced it, written once (the weighting lives in convention.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # the label Hugging Face collators give masked (pad, prompt) tokens
KD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    divisor = {
        "batchmean": s_logits.shape[0],
        "token": s_logits.shape[0],
        "mean": s_logits.numel(),
        "sum": 1,
    }[reduction]
    kl = total / divisor
    return kl * temperature**2 if t2 else kl


def token_kl(
    s: torch.Tensor,
    t: torch.Tensor,
    temperature: float,
    dtype: str | torch.dtype = "float32",
    top_k: int | None = None,
) -> torch.Tensor:
    """Per-token KL(t||s) over the last dimension at a temperature, every op in `dtype` (what a KD loss
    computes there); `top_k`: the teacher's target kept only its top k logits, renormalized (xlogy, so
    the dropped rows give 0 log 0 = 0, not NaN)."""
    dt = KD_DTYPES[dtype] if isinstance(dtype, str) else dtype
    if not top_k:
        s, t = s.to(dt) / temperature, t.to(dt) / temperature
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    kth = t.topk(top_k, -1).values[..., -1:]
    p = F.softmax(t.masked_fill(t < kth, float("-inf")).to(dt) / temperature, -1)
    return (torch.xlogy(p, p) - p * F.log_softmax(s.to(dt) / temperature, -1)).sum(-1)
