"""BatchNorm/dropout train-vs-eval conditions, for the student and for the teacher."""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import log_prob_kl
from ._probes import cached, checkpoint_val_score, forward, teacher_logits, val_score
from .base import Finding, Status, grade, register_check, worst

BN_BATCH = 64  # batch size whenever BatchNorm uses batch statistics (a typical training batch)


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibrated(ev) -> nn.Module:
    """A student copy whose BN running statistics are re-estimated on cached train inputs."""
    model = copy.deepcopy(ev.student).eval()
    x, _ = cached(ev, "train")
    bns = _bn_layers(model)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the recalibration batches
        bn.train()
    bs, budget, began = BN_BATCH, ev.probe_budget, time.perf_counter()
    with (
        torch.no_grad(),
        ev.progress_task("BatchNorm recalibration", ev.config.budgets.bn_batches) as advance,
    ):
        for i in range(ev.config.budgets.bn_batches):
            start = (i * bs) % max(len(x), 1)
            model(x[start : start + bs])
            advance()
            if budget is not None and time.perf_counter() - began > budget:  # one batch, then the time
                break
    ev.memo["bn_batches_done"] = i + 1
    return model.eval()


def _teacher_drift(ev) -> dict:
    """How far a teacher left in train mode strays from its eval-mode targets."""
    x, _ = cached(ev, "train")
    t_eval = teacher_logits(ev, "train")
    teacher = copy.deepcopy(ev.teacher).train()
    torch.manual_seed(ev.config.seed)
    t_train = forward(teacher, x, BN_BATCH, ev.num_classes)
    p = F.log_softmax(t_eval, 1)
    q = F.log_softmax(t_train, 1)
    return {
        "teacher_train_mode_agreement": float((t_eval.argmax(1) == t_train.argmax(1)).float().mean()),
        "teacher_train_mode_kl": float(log_prob_kl(p, q).mean()),
    }


@register_check(
    "mode_parity",
    needs=("cache", "norm_layers"),
    title="BatchNorm / dropout mode parity",
    order=20,
    min_samples={"train": 16, "val": 16},
)
def mode_parity(
    ev,
    *,
    recovery_warn: float = 0.03,
    recovery_fail: float = 0.10,
    loss_drop_warn: float = 0.15,
    loss_drop_fail: float = 0.40,
    teacher_agree_warn: float = 0.90,
) -> Finding:
    """Student val in eval mode vs batch statistics vs recalibrated BN; teacher train vs eval mode.

    recovery_*: val accuracy regained by recomputing BN statistics; loss_drop_*: the relative val loss
    drop it brings; teacher_agree_warn: teacher train-mode vs eval-mode top-1 agreement."""
    ev_score = checkpoint_val_score(ev)
    evidence: dict = {"eval_mode": ev_score, "student_bn_layers": len(_bn_layers(ev.student))}
    evidence["subset"] = {"train": len(ev.train.cache_x), "val": len(ev.val.cache_x)}
    status, notes = Status.PASS, []
    if evidence["student_bn_layers"]:
        evidence.update(_bn_recovery(ev, ev_score))
        status = worst(
            grade(evidence["bn_recovery_acc"], recovery_warn, recovery_fail, what="the BN recovery"),
            grade(evidence["bn_recovery_loss_rel"], loss_drop_warn, loss_drop_fail, what="the BN loss drop"),
        )
        recal = evidence["recalibrated"]
        notes.append(
            f"on a {len(ev.val.cache_x)}-sample val subset, re-estimating the student's BN statistics on "
            f"{len(ev.train.cache_x)} train samples moves val accuracy "
            f"{ev_score['acc']:.1%} -> {recal['acc']:.1%} and val loss {ev_score['loss']:.3f} -> "
            f"{recal['loss']:.3f}"
        )
    else:
        evidence.update(bn_recovery_acc=0.0, bn_recovery_loss_rel=0.0, bn_explained_fraction=0.0)
    drift = _teacher_drift(ev)
    evidence.update(drift)
    evidence["teacher_train_mode_disagreement"] = 1 - drift["teacher_train_mode_agreement"]
    agree = drift["teacher_train_mode_agreement"]
    what = "the teacher's train-mode agreement"
    status = worst(status, grade(agree, teacher_agree_warn, -math.inf, higher_is_worse=False, what=what))
    notes.append(
        f"a teacher left in train mode agrees with its eval-mode self on {agree:.1%} of "
        f"{len(ev.train.cache_x)} train samples (KL {drift['teacher_train_mode_kl']:.3f})"
    )
    return Finding("mode_parity", status, "; ".join(notes), evidence)


def _bn_recovery(ev, ev_score: dict) -> dict:
    """Val scores with batch statistics and with recalibrated BN, and what recalibration recovers."""
    batch_stats = copy.deepcopy(ev.student).eval()
    for bn in _bn_layers(batch_stats):
        bn.train()
    recal = val_score(ev, recalibrated(ev))
    rec_agree = recal["agreement"] - ev_score["agreement"]
    return {
        "batch_stats": val_score(ev, batch_stats),
        "recalibrated": recal,
        "bn_batches_done": ev.memo["bn_batches_done"],
        "bn_recovery_acc": recal["acc"] - ev_score["acc"],
        "bn_recovery_loss_rel": 1 - recal["loss"] / ev_score["loss"] if ev_score["loss"] > 0 else 0.0,
        "bn_recovery_agreement": rec_agree,
        # the share of teacher-student disagreement that recalibration removes, and what is left
        "bn_explained_fraction": max(0.0, rec_agree) / max(1e-9, 1 - ev_score["agreement"]),
        "bn_residual_disagreement": 1 - recal["agreement"],
    }
