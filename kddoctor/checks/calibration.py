"""ECE, reliability diagrams and the optimal temperature of each model on val."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ..metrics import N_BINS
from .base import Finding, Status, grade, register_check, worst

ECE_WARN, ECE_FAIL = 0.08, 0.15
TEMP_WARN, TEMP_FAIL = math.log(2.0), math.log(4.0)  # optimal temperature outside [1/2, 2] / [1/4, 4]


def optimal_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimizing val NLL (Guo et al., 2017), searched on log T in [-3, 3]."""
    logits = logits.astype(np.float64)
    y = targets.astype(int)

    def nll(log_t: float) -> float:
        return -log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def reliability(stats: dict, prefix: str) -> dict:
    count = stats[f"{prefix}_bin_count"]
    safe = np.maximum(count, 1)
    return {
        "count": count.tolist(),
        "conf": (stats[f"{prefix}_bin_conf"] / safe).tolist(),
        "acc": (stats[f"{prefix}_bin_correct"] / safe).tolist(),
    }


@register_check("calibration", needs=("train", "val"), title="Calibration", order=40)
def calibration(ev) -> Finding:
    """Student and teacher ECE (15 bins) on both splits, and how far their optimal temperature is from 1."""
    va = ev.val.metrics
    evidence = {
        f"{m}_{s}_ece": ev.splits[s].metrics[m]["ece"]
        for m in ("student", "teacher")
        for s in ("train", "val")
    }
    n_sub = len(ev.val.logits_subset.get("student", []))
    targets = ev.val.samples["target"][:n_sub]
    valid = ev.val.samples["valid"][:n_sub] > 0
    for m in ("student", "teacher"):
        logits = ev.val.logits_subset.get(m)
        if logits is not None and valid.sum() > 1:
            evidence[f"{m}_opt_temperature"] = optimal_temperature(logits[valid], targets[valid])
    t_s = evidence.get("student_opt_temperature", 1.0)
    evidence["student_log_temp"] = abs(math.log(t_s))
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
        Status.FAIL if ece > ECE_FAIL else Status.WARN if ece > ECE_WARN else Status.PASS,
        grade(abs(math.log(t_s)), TEMP_WARN, TEMP_FAIL),
    )
    direction = (
        "well calibrated"
        if abs(math.log(t_s)) < math.log(1.1)
        else "overconfident"
        if t_s > 1
        else "underconfident"
    )
    summary = (
        f"student val ECE {ece:.3f} (teacher {va['teacher']['ece']:.3f}); its optimal temperature is "
        f"{t_s:.2f} ({direction}), teacher's {evidence.get('teacher_opt_temperature', 1.0):.2f}"
    )
    return Finding("calibration", status, summary, evidence, details)
