"""BatchNorm/dropout train-vs-eval conditions, for the student and for the teacher."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ._probes import cached, checkpoint_val_score, forward, teacher_logits, val_score
from .base import Finding, Status, register_check, worst

RECOVERY_WARN, RECOVERY_FAIL = 0.03, 0.10  # val accuracy regained by recomputing BN statistics
LOSS_DROP_WARN, LOSS_DROP_FAIL = 0.15, 0.40  # relative val loss drop from recomputing BN statistics
TEACHER_AGREE_WARN = 0.90  # teacher train-mode vs eval-mode top-1 agreement
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
    bs = BN_BATCH
    with torch.no_grad():
        for i in range(ev.config.budgets.bn_batches):
            start = (i * bs) % max(len(x), 1)
            model(x[start : start + bs])
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
        "teacher_train_mode_kl": float((p.exp() * (p - q)).sum(1).mean()),
    }


@register_check(
    "mode_parity",
    needs=("cache", "norm_layers"),
    title="BatchNorm / dropout mode parity",
    order=20,
    min_samples={"train": 16, "val": 16},
)
def mode_parity(ev) -> Finding:
    """Student val in eval mode vs batch statistics vs recalibrated BN; teacher train vs eval mode."""
    ev_score = checkpoint_val_score(ev)
    evidence: dict = {"eval_mode": ev_score, "student_bn_layers": len(_bn_layers(ev.student))}
    status, notes = Status.PASS, []
    if evidence["student_bn_layers"]:
        batch_stats = copy.deepcopy(ev.student).eval()
        for bn in _bn_layers(batch_stats):
            bn.train()
        evidence["batch_stats"] = val_score(ev, batch_stats)
        recal = val_score(ev, recalibrated(ev))
        evidence["recalibrated"] = recal
        rec_acc = recal["acc"] - ev_score["acc"]
        rec_loss = 1 - recal["loss"] / ev_score["loss"] if ev_score["loss"] > 0 else 0.0
        rec_agree = recal["agreement"] - ev_score["agreement"]
        evidence.update(
            bn_recovery_acc=rec_acc,
            bn_recovery_loss_rel=rec_loss,
            bn_recovery_agreement=rec_agree,
            # the share of teacher-student disagreement that recalibration removes, and what is left
            bn_explained_fraction=max(0.0, rec_agree) / max(1e-9, 1 - ev_score["agreement"]),
            bn_residual_disagreement=1 - recal["agreement"],
        )
        status = worst(
            Status.FAIL
            if rec_acc > RECOVERY_FAIL or rec_loss > LOSS_DROP_FAIL
            else Status.WARN
            if rec_acc > RECOVERY_WARN or rec_loss > LOSS_DROP_WARN
            else Status.PASS
        )
        notes.append(
            f"on a {len(ev.val.cache_x)}-sample val subset, re-estimating the student's BN statistics on "
            f"train data moves val accuracy "
            f"{ev_score['acc']:.1%} -> {recal['acc']:.1%} and val loss {ev_score['loss']:.3f} -> "
            f"{recal['loss']:.3f}"
        )
    else:
        evidence.update(bn_recovery_acc=0.0, bn_recovery_loss_rel=0.0, bn_explained_fraction=0.0)
    drift = _teacher_drift(ev)
    evidence.update(drift)
    evidence["teacher_train_mode_disagreement"] = 1 - drift["teacher_train_mode_agreement"]
    if drift["teacher_train_mode_agreement"] < TEACHER_AGREE_WARN:
        status = worst(status, Status.WARN)
    notes.append(
        f"a teacher left in train mode agrees with its eval-mode self on "
        f"{drift['teacher_train_mode_agreement']:.1%} of train samples "
        f"(KL {drift['teacher_train_mode_kl']:.3f})"
    )
    return Finding("mode_parity", status, "; ".join(notes), evidence)
