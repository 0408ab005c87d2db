"""The KD objective under every convention users train with, written once."""

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


def loss_weights(alpha: float, alpha_on: str) -> tuple[float, float]:
    """(CE weight, KD weight): alpha on kd -> (1-a, a); alpha on ce -> (a, 1-a)."""
    return (1.0 - alpha, alpha) if alpha_on == "kd" else (alpha, 1.0 - alpha)


def kd_loss(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    alpha: float,
    alpha_on: str = "kd",
    temperature: float = 4.0,
    t2: bool = True,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """w_ce * CE(s, y) + w_kd * KD(s, t)."""
    w_ce, w_kd = loss_weights(alpha, alpha_on)
    loss = s_logits.new_zeros(())
    if w_kd:
        loss = loss + w_kd * kd_term(s_logits, t_logits, temperature, t2=t2, reduction=reduction)
    if w_ce and targets is not None:
        loss = loss + w_ce * F.cross_entropy(s_logits, targets)
    return loss


def effective_weights(
    alpha: float,
    alpha_on: str,
    temperature: float,
    t2: bool,
    reduction: str,
    num_classes: int,
    batch_size: int,
) -> dict:
    """The weight each term really carries, in units comparable to the CE gradient.

    The soft-target gradients shrink as 1/T² (Hinton et al., 2015), which T² undoes; without it the
    KD term is worth w_kd / T². `mean` divides the KL by the class count as well as the batch (a
    common bug); `sum` multiplies it by the batch size relative to a mean-reduced CE.
    """
    w_ce, w_kd = loss_weights(alpha, alpha_on)
    scale = {"batchmean": 1.0, "mean": 1.0 / num_classes, "sum": float(batch_size)}[reduction]
    t_factor = 1.0 if t2 else 1.0 / temperature**2
    kd_eff = w_kd * t_factor * scale
    total = kd_eff + w_ce
    return {
        "ce": w_ce,
        "kd": w_kd,
        "kd_effective": kd_eff,
        "reduction_scale": scale,
        "t2_factor": t_factor,
        "kd_share": kd_eff / total if total else 0.0,
    }
