"""Train vs val for the student, relative to the teacher's own gap; membership inference AUC."""

from __future__ import annotations

import math

import numpy as np

from ._probes import auc
from .base import Finding, grade, register_check, worst

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
def generalization_gap(
    ev,
    *,
    agreement_excess_warn: float = 0.03,
    agreement_excess_fail: float = 0.08,
    loss_excess_warn: float = 0.15,  # nats beyond the teacher's own loss gap
    loss_excess_fail: float = 0.40,
    mia_excess_warn: float = 0.07,  # membership AUC, student minus teacher
    mia_excess_fail: float = 0.15,
) -> Finding:
    """Student train->val degradation beyond the teacher's, and loss-based membership inference."""
    evidence = {**_gaps(ev), **_membership(ev)}
    details = {
        "loss_bins": LOSS_BINS.tolist(),
        "loss_hist": {
            f"{m}_{s.name}": _hist(_valid(s, f"{m[0]}_loss"))
            for m in ("teacher", "student")
            for s in (ev.train, ev.val)
        },
    }
    status = worst(
        grade(evidence["excess_agreement_gap"], agreement_excess_warn, agreement_excess_fail, what="the gap"),
        grade(evidence["excess_loss_gap"], loss_excess_warn, loss_excess_fail, what="the loss gap"),
        grade(evidence["mia_auc_excess"], mia_excess_warn, mia_excess_fail, what="the membership AUC"),
    )
    e = evidence
    summary = (
        f"on {ev.train.n} {ev.train_source} and {ev.val.n} val samples: student loss rises "
        f"{e['student_loss_gap']:+.3f} from train to val (teacher {e['teacher_loss_gap']:+.3f}); "
        f"agreement falls {e['agreement_gap']:.1%} ({e['excess_agreement_gap']:+.1%} beyond the "
        f"teacher's own accuracy drop); membership AUC (confidence) student "
        f"{e['mia_auc_student']:.2f} vs teacher {e['mia_auc_teacher']:.2f}"
    )
    return Finding("generalization_gap", status, summary, evidence, details)


def _gaps(ev) -> dict:
    """Train-to-val changes of both models, the paired val gap and each gap's z-score."""
    tr, va = ev.train.metrics, ev.val.metrics
    t_acc_gap = tr["teacher"]["acc"] - va["teacher"]["acc"]
    agree_gap = tr["agreement"] - va["agreement"]
    excess_agree = agree_gap - max(0.0, t_acc_gap)
    s_loss_gap = va["student"]["loss"] - tr["student"]["loss"]
    t_loss_gap = va["teacher"]["loss"] - tr["teacher"]["loss"]
    val_gap, val_gap_z = paired_gap(ev.val)
    n_tr, n_va = ev.train.n, ev.val.n
    # Augmented train inputs are harder than val ones for both models: a train-vs-val difference on
    # them is no gap to explain, so the train-side gap signals carry no certainty (z = 0) then.
    train_ok = 0.0 if ev.train_augmented else 1.0
    return {
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
        "excess_loss_gap": s_loss_gap - max(0.0, t_loss_gap),
        "student_acc_gap": tr["student"]["acc"] - va["student"]["acc"],
        "teacher_acc_gap": t_acc_gap,
        "agreement_gap": agree_gap,
        "excess_agreement_gap": excess_agree,
        "kl_gap": va["kl"] - tr["kl"],
        "train_agreement": tr["agreement"],
        "val_agreement": va["agreement"],
        "train_shortfall": 1 - tr["agreement"],
        "samples": {"train": n_tr, "val": n_va},
    }


def _membership(ev) -> dict:
    """Membership inference by confidence (max softmax, label-free, so label noise cannot fake it)
    and by per-sample loss against the labels: how well each model tells train from val samples."""
    mia = {
        m: auc(_valid(ev.train, f"{m[0]}_conf"), _valid(ev.val, f"{m[0]}_conf"))
        for m in ("student", "teacher")
    }
    mia_loss = {
        m: auc(-_valid(ev.train, f"{m[0]}_loss"), -_valid(ev.val, f"{m[0]}_loss"))
        for m in ("student", "teacher")
    }
    return {
        "mia_auc_student": mia["student"],
        "mia_auc_teacher": mia["teacher"],
        "mia_auc_excess": mia["student"] - mia["teacher"],
        "mia_loss_auc_student": mia_loss["student"],
        "mia_loss_auc_teacher": mia_loss["teacher"],
    }
