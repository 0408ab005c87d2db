"""Train vs val for the student, relative to the teacher's own gap; membership inference AUC."""

from __future__ import annotations

import math

import numpy as np

from ._probes import auc
from .base import Finding, Status, register_check, worst

AGREE_EXCESS_WARN, AGREE_EXCESS_FAIL = 0.03, 0.08
LOSS_EXCESS_WARN, LOSS_EXCESS_FAIL = 0.15, 0.40  # nats beyond the teacher's own loss gap
MIA_EXCESS_WARN, MIA_EXCESS_FAIL = 0.07, 0.15  # student AUC minus teacher AUC
LOSS_BINS = np.concatenate([[0.0], np.logspace(-4, np.log10(20), 30)])  # per-sample loss histogram edges


def _valid(split, col: str) -> np.ndarray:
    s = split.samples
    return s[col][s["valid"] > 0]


def paired_gap(split) -> tuple[float, float]:
    """Teacher accuracy minus student accuracy on the same samples, and its McNemar z-score
    (discordant pairs only: b = teacher right / student wrong, c = the reverse)."""
    s = split.samples
    ok = s["valid"] > 0
    t_ok, s_ok = (s["t_pred"] == s["target"])[ok], (s["s_pred"] == s["target"])[ok]
    b, c = float((t_ok & ~s_ok).sum()), float((~t_ok & s_ok).sum())
    n = max(int(ok.sum()), 1)
    return (b - c) / n, (b - c) / math.sqrt(b + c) if b + c else 0.0


def proportion_z(diff: float, *splits: tuple[float, int]) -> float:
    """diff divided by the standard error of the proportions it is made of (p, n) per split."""
    var = sum(p * (1 - p) / max(n, 1) for p, n in splits)
    return diff / math.sqrt(var) if var > 0 else (math.copysign(10.0, diff) if diff else 0.0)


def _hist(values: np.ndarray) -> list[int]:
    return np.histogram(np.clip(values, 0, LOSS_BINS[-1]), bins=LOSS_BINS)[0].tolist()


@register_check(
    "generalization_gap",
    needs=("train", "val"),
    title="Generalization gap",
    order=30,
    min_samples={"train": 20, "val": 20},
)
def generalization_gap(ev) -> Finding:
    """Student train->val degradation beyond the teacher's, and loss-based membership inference."""
    tr, va = ev.train.metrics, ev.val.metrics
    s_loss_gap = va["student"]["loss"] - tr["student"]["loss"]
    t_loss_gap = va["teacher"]["loss"] - tr["teacher"]["loss"]
    t_acc_gap = tr["teacher"]["acc"] - va["teacher"]["acc"]
    s_acc_gap = tr["student"]["acc"] - va["student"]["acc"]
    agree_gap = tr["agreement"] - va["agreement"]
    excess_agree = agree_gap - max(0.0, t_acc_gap)
    excess_loss = s_loss_gap - max(0.0, t_loss_gap)
    # Membership inference by confidence (max softmax, label-free, so label noise cannot fake it),
    # and by per-sample loss against the labels.
    mia = {
        m: auc(_valid(ev.train, f"{m[0]}_conf"), _valid(ev.val, f"{m[0]}_conf"))
        for m in ("student", "teacher")
    }
    mia_loss = {
        m: auc(-_valid(ev.train, f"{m[0]}_loss"), -_valid(ev.val, f"{m[0]}_loss"))
        for m in ("student", "teacher")
    }
    mia_excess = mia["student"] - mia["teacher"]
    val_gap, val_gap_z = paired_gap(ev.val)
    n_tr, n_va = ev.train.n, ev.val.n
    # Augmented train inputs are harder than val ones for both models: a train-vs-val difference on
    # them is no gap to explain, so the train-side gap signals carry no certainty (z = 0) then.
    train_ok = 0.0 if ev.train_augmented else 1.0
    evidence = {
        "train_augmented": 1.0 - train_ok,
        "train_source": ev.train_source,
        "val_acc_gap": val_gap,
        "val_acc_gap_z": val_gap_z,
        "excess_agreement_gap_z": train_ok
        * proportion_z(excess_agree, (tr["agreement"], n_tr), (va["agreement"], n_va)),
        "teacher_val_drop": t_acc_gap,
        "teacher_val_drop_z": train_ok
        * proportion_z(t_acc_gap, (tr["teacher"]["acc"], n_tr), (va["teacher"]["acc"], n_va)),
        "train_shortfall_z": train_ok * proportion_z(1 - tr["agreement"], (tr["agreement"], n_tr)),
        "student_loss_gap": s_loss_gap,
        "teacher_loss_gap": t_loss_gap,
        "excess_loss_gap": excess_loss,
        "student_acc_gap": s_acc_gap,
        "teacher_acc_gap": t_acc_gap,
        "agreement_gap": agree_gap,
        "excess_agreement_gap": excess_agree,
        "kl_gap": va["kl"] - tr["kl"],
        "train_agreement": tr["agreement"],
        "val_agreement": va["agreement"],
        "train_shortfall": 1 - tr["agreement"],
        "mia_auc_student": mia["student"],
        "mia_auc_teacher": mia["teacher"],
        "mia_auc_excess": mia_excess,
        "mia_loss_auc_student": mia_loss["student"],
        "mia_loss_auc_teacher": mia_loss["teacher"],
    }
    details = {
        "loss_bins": LOSS_BINS.tolist(),
        "loss_hist": {
            f"{m}_{s.name}": _hist(_valid(s, f"{m[0]}_loss"))
            for m in ("teacher", "student")
            for s in (ev.train, ev.val)
        },
    }
    status = worst(
        Status.FAIL
        if excess_agree > AGREE_EXCESS_FAIL
        else Status.WARN
        if excess_agree > AGREE_EXCESS_WARN
        else Status.PASS,
        Status.FAIL
        if excess_loss > LOSS_EXCESS_FAIL
        else Status.WARN
        if excess_loss > LOSS_EXCESS_WARN
        else Status.PASS,
        Status.FAIL
        if mia_excess > MIA_EXCESS_FAIL
        else Status.WARN
        if mia_excess > MIA_EXCESS_WARN
        else Status.PASS,
    )
    summary = (
        f"student loss rises {s_loss_gap:+.3f} from train to val (teacher {t_loss_gap:+.3f}); "
        f"agreement falls {agree_gap:.1%} ({excess_agree:+.1%} beyond the teacher's own accuracy drop); "
        f"membership AUC (confidence) student {mia['student']:.2f} vs teacher {mia['teacher']:.2f}"
    )
    return Finding("generalization_gap", status, summary, evidence, details)
