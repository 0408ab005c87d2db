"""ECE, reliability diagrams and the optimal temperature of each model on val."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from ..metrics import N_BINS
from .base import Finding, grade, register_check, worst

LOG_T_BOUND = 3.0  # temperatures searched in [e^-3, e^3]
LOG_T_PRIOR = 0.003  # weight of (log T)^2: a perfect model's NLL keeps falling as T -> 0, the prior stops it


def optimal_temperature(logits, targets) -> tuple[float, bool]:
    """Temperature minimizing val NLL (Guo et al., 2017) plus a weak prior towards T=1, searched on
    log T in [-3, 3]; returns (T, whether it sits at the bound of the search).

    `logits` [N, C] and `targets` [N], numpy or torch: the NLL is evaluated in float64 on the logits'
    own device (a causal LM's [tokens, vocabulary] rows stay on its GPU), one host read per step of the
    search."""
    z = torch.as_tensor(logits).double()
    y = torch.as_tensor(targets, device=z.device).long()
    picked = z.gather(1, y[:, None])[:, 0]

    def objective(log_t: float) -> float:
        inv = math.exp(-log_t)
        nll = float((torch.logsumexp(z * inv, 1) - picked * inv).mean())
        return nll + LOG_T_PRIOR * log_t**2

    res = minimize_scalar(
        objective, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded", options={"xatol": 1e-4}
    )
    return float(math.exp(res.x)), abs(res.x) > LOG_T_BOUND - 0.05


def reliability(stats: dict, prefix: str) -> dict:
    count = stats[f"{prefix}_bin_count"]
    safe = np.maximum(count, 1)
    return {
        "count": count.tolist(),
        "conf": (stats[f"{prefix}_bin_conf"] / safe).tolist(),
        "acc": (stats[f"{prefix}_bin_correct"] / safe).tolist(),
    }


@register_check("calibration", needs=("train", "val"), title="Calibration", order=40, min_samples={"val": 30})
def calibration(
    ev,
    *,
    ece_warn: float = 0.08,
    ece_fail: float = 0.15,
    log_temp_warn: float = math.log(2.0),  # optimal temperature outside [1/2, 2]
    log_temp_fail: float = math.log(3.0),  # ... outside [1/3, 3]
) -> Finding:
    """Student and teacher ECE (15 bins) on both splits, and how far their optimal temperature is from 1."""
    va = ev.val.metrics
    evidence = {
        f"{m}_{s}_ece": ev.splits[s].metrics[m]["ece"]
        for m in ("student", "teacher")
        for s in ("train", "val")
    }
    sub = ev.val.logits_subset
    for m in ("student", "teacher"):
        if len(sub.get(m, [])) > 1:
            t_opt, at_bound = optimal_temperature(sub[m], sub["target"])
            evidence[f"{m}_opt_temperature"] = t_opt
            evidence[f"{m}_temperature_at_bound"] = at_bound
    t_s = evidence.get("student_opt_temperature", 1.0)
    t_t = evidence.get("teacher_opt_temperature", 1.0)
    evidence["student_log_temp"] = abs(math.log(t_s))
    # a student that wants a much cooler softmax than its teacher is under-confident: a sign of
    # under-training (the teacher's own temperature is the baseline, so a soft teacher does not count)
    evidence["student_underconfidence"] = max(0.0, -math.log(t_s)) - max(0.0, -math.log(t_t))
    evidence["calibration_samples"] = len(sub.get("student", []))
    details = {
        "bins": N_BINS,
        "reliability": {
            f"{m}_{s}": reliability(ev.splits[s].stats, m[0])
            for m in ("teacher", "student")
            for s in ev.splits
        },
    }
    ece = va["student"]["ece"]
    status = worst(
        grade(ece, ece_warn, ece_fail, what="the student's val ECE"),
        grade(abs(math.log(t_s)), log_temp_warn, log_temp_fail, what="the student's optimal temperature"),
    )
    direction = (
        "well calibrated"
        if abs(math.log(t_s)) < math.log(1.1)
        else "overconfident"
        if t_s > 1
        else "underconfident"
    )
    bound = " (at the bound of the search)" if evidence.get("student_temperature_at_bound") else ""
    summary = (
        f"student val ECE {ece:.3f} (teacher {va['teacher']['ece']:.3f}); on "
        f"{evidence['calibration_samples']} val samples its optimal temperature is {t_s:.2f}{bound} "
        f"({direction}), teacher's {t_t:.2f}"
    )
    return Finding("calibration", status, summary, evidence, details)
