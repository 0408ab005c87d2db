"""Is the teacher the student? One checkpoint passed twice, or a teacher path that points at the
student's initialisation: the KD term is then zero from the first step and nothing is distilled (a
failure users report after days of compute). Both tasks read it from the main pass: the two models'
KL and agreement on both splits."""

from __future__ import annotations

from .base import Finding, Status, register_check

KL_FLOOR = 1e-9


@register_check("model_identity", title="Teacher is not the student", order=5)
def image_model_identity(ev, *, kl_floor: float = KL_FLOOR) -> Finding:
    """KL(t||s) at or below kl_floor on both splits with every argmax shared: one model."""
    val, train = ev.val.metrics, ev.train.metrics
    return identity_finding(val["kl"], val["agreement"], train["kl"], kl_floor, "samples")


@register_check("model_identity", task="causal-lm", title="Teacher is not the student", order=5)
def lm_model_identity(ev, *, kl_floor: float = KL_FLOOR) -> Finding:
    """KL(t||s) per token at or below kl_floor on both splits with every argmax shared: one model."""
    return identity_finding(ev.val["kl"], ev.val["agreement"], ev.train["kl"], kl_floor, "tokens")


def identity_finding(kl_val: float, agreement: float, kl_train: float, kl_floor: float, unit: str) -> Finding:
    """The model_identity finding from a pass's KL and agreement (both tasks)."""
    identical = kl_val <= kl_floor and kl_train <= kl_floor and agreement >= 1.0
    evidence = {"kl_val": kl_val, "kl_train": kl_train, "agreement": agreement, "identical": float(identical)}
    if identical:
        return Finding(
            "model_identity",
            Status.FAIL,
            f"teacher and student give the same predictions on every {unit[:-1]} (KL {kl_val:.1e} on val, "
            f"{kl_train:.1e} on train, agreement {agreement:.0%}): the teacher is the student, so the KD "
            "term is 0 and nothing was distilled; point the teacher at the teacher's checkpoint",
            evidence,
        )
    return Finding(
        "model_identity",
        Status.PASS,
        f"teacher and student differ (KL {kl_val:.3g} nats per {unit[:-1]} on val, agreement "
        f"{agreement:.1%})",
        evidence,
    )
