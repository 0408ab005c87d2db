"""Loss weighting: gradient balance at the checkpoint and short (alpha, T) fine-tuning sweeps."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..convention import PRESETS, KDConvention
from ..engine import as_logits
from ._probes import cached, checkpoint_val_score, finetune, teacher_logits, val_score
from .base import Finding, Status, grade, register_check, worst

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_RUN_FLOOR_S = 0.3  # each of the ~10 sweep runs gets a tenth of the probe budget, never less
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def _flat(grads: tuple, params: list) -> torch.Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )


def gradient_balance(ev) -> dict:
    """Norms and cosine of the weighted CE and KD gradients under the user's stated convention."""
    conv, budgets = ev.config.convention, ev.config.budgets
    x, y = cached(ev, "train")
    t = teacher_logits(ev, "train")
    model = copy.deepcopy(ev.student).train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    bs = min(budgets.probe_batch, len(x))
    n_ce = n_kd = cos = 0.0
    batches = max(1, min(budgets.grad_batches, len(x) // bs))
    with torch.enable_grad():
        for i in range(batches):
            sl = slice(i * bs, (i + 1) * bs)
            s = as_logits(model(x[sl]), ev.num_classes).float()
            kd, ce = conv.terms(s, t[sl], y[sl])
            g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
            g_kd = torch.autograd.grad(kd, params, allow_unused=True)
            a, b = _flat(g_ce, params), _flat(g_kd, params)
            n_ce += float(a.norm()) / batches
            n_kd += float(b.norm()) / batches
            cos += float(F.cosine_similarity(a, b, dim=0)) / batches
    return {
        "grad_norm_ce": n_ce,
        "grad_norm_kd": n_kd,
        "grad_ratio_kd_ce": n_kd / max(n_ce, 1e-12),
        "grad_cosine": cos,
    }


def sweep(ev) -> dict:
    """Fine-tune copies of the student for a fixed budget over alpha (at T) and T (at the best alpha).

    Each point runs the textbook objective (alpha on KD, T², batchmean) and is labelled with the same
    effective setting in the user's own convention (`user`, `axis`)."""
    conv, n_cls = ev.config.convention, ev.num_classes
    runs: dict = {}
    # The first run (the user's setting) gets a tenth of the time budget; every other run then takes
    # the steps it managed, so all settings are compared at the same number of steps.
    seconds = None if ev.probe_budget is None else ev.probe_budget / 10
    if seconds is not None and ev.config.budgets.probe_seconds is None:  # a scaled budget has a floor
        seconds = max(seconds, SWEEP_RUN_FLOOR_S)
    budget = {"steps": ev.config.budgets.sweep_steps, "seconds": seconds, "stopped_by": "steps"}

    def run(c: KDConvention) -> dict:
        if c not in runs:
            tuned = finetune(
                ev, c, steps=budget["steps"], seed=1, budget_s=budget["seconds"], label="alpha/T sweep"
            )
            if budget["seconds"] is not None:  # the first run sets the steps of all the others
                budget.update(steps=tuned.steps, seconds=None, stopped_by=tuned.stopped_by)
            runs[c] = val_score(ev, tuned.model)
        return runs[c]

    def point(a: float, T: float) -> dict:
        user = conv.to_user(a, T, n_cls)
        return dict(
            alpha=a,
            temperature=T,
            user=user.setting(),
            axis=user.axis_value(),
            **run(KDConvention.textbook(a, T)),
        )

    baseline = run(conv)
    alpha_curve = [point(a, conv.temperature) for a in ALPHAS]
    rank = lambda r: (r["agreement"], -r["loss"])  # noqa: E731
    best_alpha = max(alpha_curve, key=rank)["alpha"]
    temp_curve = [point(best_alpha, T) for T in TEMPERATURES]
    best = max(alpha_curve + temp_curve, key=rank)
    return {
        "baseline": baseline,
        "alpha_curve": alpha_curve,
        "temperature_curve": temp_curve,
        "best": best,
        "steps": budget["steps"],
        "stopped_by": budget["stopped_by"],
        "axis": conv.weight_axis,
        "temperature_axis": PRESETS[conv.preset].t_name,
    }


def recommendation(conv: KDConvention, best: dict, gain: float, num_classes: int, gain_warn: float):
    """The sweep's best setting in the user's convention; None when it does not beat continuing with the
    stated setting by more than the noise floor, or when it is the stated setting (no remedy then)."""
    if gain <= gain_warn:
        return None
    rec = conv.to_user(best["alpha"], best["temperature"], num_classes)
    if rec.same_setting(conv):
        return None
    note = " (torchdistill then returns the bare KL: pure KD without beta or T²)" if rec.bare_kl else ""
    return rec.recommendation(best["alpha"], best["temperature"], note)


def _shares(conv: KDConvention, n_cls: int) -> dict:
    """The KD share the stated weights would have under the other T² and reduction choices."""
    return {
        "without_t2": replace(conv, t2=False, reduction="batchmean").kd_share(n_cls),
        "with_mean_reduction": replace(conv, reduction="mean").kd_share(n_cls),
        "with_t2_and_batchmean": replace(conv, t2=True, reduction="batchmean").kd_share(n_cls),
    }


@register_check(
    "alpha_sensitivity",
    needs=("cache", "trainable"),
    title="Loss weighting (alpha, T)",
    order=60,
    min_samples={"train": 32, "val": 20},
)
def alpha_sensitivity(
    ev, *, gain_warn: float = 0.03, gain_fail: float = 0.08, share_warn: float = 0.2
) -> Finding:
    """Effective weight of each term, gradient balance, and what other (alpha, T) would have given.

    gain_*: val agreement the best sweep point gains over continuing with the stated setting;
    share_warn: the KD term's effective share of the loss below which the teacher barely teaches."""
    conv, n_cls = ev.config.convention, ev.num_classes
    eff = conv.effective(n_cls)
    grads, sw, start = gradient_balance(ev), sweep(ev), checkpoint_val_score(ev)
    base, best = sw["baseline"], sw["best"]
    gain = best["agreement"] - base["agreement"]
    rel = lambda a, b: 1 - a / b if b > 0 else 0.0  # noqa: E731
    evidence = {
        "convention": conv.to_dict(n_cls),
        "effective_weights": eff,
        "kd_share": eff["kd_share"],
        "kd_share_if": _shares(conv, n_cls),
        **grads,
        "checkpoint_val": start,
        "continue_val": base,
        "continue_gain_agreement": base["agreement"] - start["agreement"],
        "continue_gain_loss_rel": rel(base["loss"], start["loss"]),
        "continue_gain_kl_rel": rel(base["kl"], start["kl"]),
        "gain_agreement": gain,
        "gain_loss": base["loss"] - best["loss"],
        "gain_kl_rel": rel(best["kl"], base["kl"]),
        "recommended": recommendation(conv, best, gain, n_cls, gain_warn),
        "reduction_is_mean": float(conv.reduction == "mean"),
        "t2_missing": float(not conv.t2 and conv.temperature > 1),
        "sweep_steps": sw["steps"],
        "sweep_stopped_by": sw["stopped_by"],
        "sweep_samples": {"train": len(ev.train.cache_x), "val": len(ev.val.cache_x)},
    }
    details = {k: sw[k] for k in ("alpha_curve", "temperature_curve", "axis", "temperature_axis")}
    starved = eff["kd_share"] < share_warn
    status = worst(
        grade(gain, gain_warn, gain_fail)
        if not starved
        else Status.FAIL
        if gain > gain_warn
        else Status.WARN,
        Status.WARN if evidence["reduction_is_mean"] or evidence["t2_missing"] else Status.PASS,
    )
    return Finding("alpha_sensitivity", status, _summary(ev, conv, eff, grads, sw, gain), evidence, details)


def _summary(ev, conv: KDConvention, eff: dict, grads: dict, sw: dict, gain: float) -> str:
    best, base = sw["best"], sw["baseline"]
    n_tr, n_va = len(ev.train.cache_x), len(ev.val.cache_x)
    cut = " (as many as the time budget allowed)" if sw["stopped_by"] == "time" else ""
    bugs = []
    if conv.reduction == "mean":
        bugs.append(f"reduction='mean' divides the KD term by {ev.num_classes} classes")
    if not conv.t2 and conv.temperature > 1:
        bugs.append(f"without T² the KD gradients shrink by {conv.temperature**2:g}x")
    summary = (
        f"KD carries {eff['kd_share']:.0%} of the effective loss weight "
        f"(gradient norm ratio KD/CE {grads['grad_ratio_kd_ce']:.2f}); {sw['steps']} fine-tuning steps{cut} "
        f"on {n_tr} train samples with {best['user']} reach val agreement {best['agreement']:.1%} vs "
        f"{base['agreement']:.1%} continuing with your setting ({conv.setting()}), on {n_va} val samples"
    )
    return summary + ("; " + "; ".join(bugs) if bugs else "")
