"""Loss weighting: gradient balance at the checkpoint and short (alpha, T) fine-tuning sweeps."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..engine import as_logits
from ..losses import effective_weights, kd_term, loss_weights
from ._probes import cached, checkpoint_val_score, finetune, teacher_logits, val_score
from .base import Finding, Status, register_check, worst

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
SHARE_WARN = 0.2  # effective KD share of the loss below which the teacher barely teaches
GAIN_WARN, GAIN_FAIL = 0.03, 0.08  # val agreement gained over continuing with the user's setting


def _flat(grads: tuple, params: list) -> torch.Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )


def gradient_balance(ev) -> dict:
    """Norms and cosine of the weighted CE and KD gradients under the user's stated convention."""
    cfg = ev.config
    x, y = cached(ev, "train")
    t = teacher_logits(ev, "train")
    model = copy.deepcopy(ev.student).train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    w_ce, w_kd = loss_weights(cfg.alpha, cfg.alpha_on)
    bs = min(cfg.budgets.probe_batch, len(x))
    n_ce = n_kd = cos = 0.0
    batches = max(1, min(cfg.budgets.grad_batches, len(x) // bs))
    with torch.enable_grad():
        for i in range(batches):
            sl = slice(i * bs, (i + 1) * bs)
            s = as_logits(model(x[sl]), ev.num_classes).float()
            ce = w_ce * F.cross_entropy(s, y[sl])
            kd = w_kd * kd_term(s, t[sl], cfg.temperature, t2=cfg.t2, reduction=cfg.kd_reduction)
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
    """Fine-tune copies of the student for a fixed budget over alpha (at T) and T (at the best alpha)."""
    cfg = ev.config
    steps = cfg.budgets.sweep_steps
    runs: dict = {}

    def run(key: str, **kw) -> dict:
        if key not in runs:
            model, _ = finetune(ev, steps=steps, seed=1, **kw)
            runs[key] = val_score(ev, model)
        return runs[key]

    baseline = run(
        "user",
        alpha=cfg.alpha,
        alpha_on=cfg.alpha_on,
        temperature=cfg.temperature,
        t2=cfg.t2,
        reduction=cfg.kd_reduction,
    )
    # The sweep states alpha in the KD-weight convention, with T² and batchmean (the textbook objective).
    alpha_curve = [
        dict(
            alpha=a,
            temperature=cfg.temperature,
            **run(f"a{a}_T{cfg.temperature}", alpha=a, temperature=cfg.temperature),
        )
        for a in ALPHAS
    ]
    rank = lambda r: (r["agreement"], -r["loss"])  # noqa: E731
    best_alpha = max(alpha_curve, key=rank)["alpha"]
    temp_curve = [
        dict(alpha=best_alpha, temperature=T, **run(f"a{best_alpha}_T{T}", alpha=best_alpha, temperature=T))
        for T in TEMPERATURES
    ]
    best = max(alpha_curve + temp_curve, key=rank)
    return {
        "baseline": baseline,
        "alpha_curve": alpha_curve,
        "temperature_curve": temp_curve,
        "best": best,
        "steps": steps,
    }


@register_check(
    "alpha_sensitivity",
    needs=("cache", "trainable"),
    title="Loss weighting (alpha, T)",
    order=60,
    min_samples={"train": 32, "val": 20},
)
def alpha_sensitivity(ev) -> Finding:
    """Effective weight of each term, gradient balance, and what other (alpha, T) would have given."""
    cfg = ev.config
    eff = effective_weights(
        cfg.alpha, cfg.alpha_on, cfg.temperature, cfg.t2, cfg.kd_reduction, ev.num_classes, cfg.batch_size
    )
    alt = {
        "without_t2": effective_weights(
            cfg.alpha, cfg.alpha_on, cfg.temperature, False, "batchmean", ev.num_classes, cfg.batch_size
        )["kd_share"],
        "with_mean_reduction": effective_weights(
            cfg.alpha, cfg.alpha_on, cfg.temperature, cfg.t2, "mean", ev.num_classes, cfg.batch_size
        )["kd_share"],
        "textbook": effective_weights(
            cfg.alpha, cfg.alpha_on, cfg.temperature, True, "batchmean", ev.num_classes, cfg.batch_size
        )["kd_share"],
    }
    grads = gradient_balance(ev)
    sw = sweep(ev)
    start = checkpoint_val_score(ev)
    base, best = sw["baseline"], sw["best"]
    gain = best["agreement"] - base["agreement"]
    evidence = {
        "convention": {
            "alpha": cfg.alpha,
            "alpha_on": cfg.alpha_on,
            "temperature": cfg.temperature,
            "t2": cfg.t2,
            "kd_reduction": cfg.kd_reduction,
        },
        "effective_weights": eff,
        "kd_share": eff["kd_share"],
        "kd_share_if": alt,
        **grads,
        "checkpoint_val": start,
        "continue_val": base,
        "continue_gain_agreement": base["agreement"] - start["agreement"],
        "continue_gain_loss_rel": 1 - base["loss"] / start["loss"] if start["loss"] > 0 else 0.0,
        "continue_gain_kl_rel": 1 - base["kl"] / start["kl"] if start["kl"] > 0 else 0.0,
        "gain_agreement": gain,
        "gain_loss": base["loss"] - best["loss"],
        "gain_kl_rel": 1 - best["kl"] / base["kl"] if base["kl"] > 0 else 0.0,
        # below the noise floor the advice is the stated setting (as a KD weight)
        "recommended": {"alpha": best["alpha"], "alpha_on": "kd", "temperature": best["temperature"]}
        if gain > GAIN_WARN
        else {
            "alpha": loss_weights(cfg.alpha, cfg.alpha_on)[1],
            "alpha_on": "kd",
            "temperature": cfg.temperature,
        },
        "reduction_is_mean": float(cfg.kd_reduction == "mean"),
        "t2_missing": float(not cfg.t2 and cfg.temperature > 1),
        "sweep_steps": sw["steps"],
    }
    details = {"alpha_curve": sw["alpha_curve"], "temperature_curve": sw["temperature_curve"]}
    status = worst(
        Status.FAIL
        if gain > GAIN_FAIL or (eff["kd_share"] < SHARE_WARN and gain > GAIN_WARN)
        else Status.WARN
        if gain > GAIN_WARN or eff["kd_share"] < SHARE_WARN
        else Status.PASS,
        Status.WARN if cfg.kd_reduction == "mean" or evidence["t2_missing"] else Status.PASS,
    )
    bugs = []
    if cfg.kd_reduction == "mean":
        bugs.append(f"reduction='mean' divides the KD term by {ev.num_classes} classes")
    if evidence["t2_missing"]:
        bugs.append(f"without T² the KD gradients shrink by {cfg.temperature**2:g}x")
    summary = (
        f"KD carries {eff['kd_share']:.0%} of the effective loss weight "
        f"(gradient norm ratio KD/CE {grads['grad_ratio_kd_ce']:.2f}); "
        f"{sw['steps']} fine-tuning steps with alpha={best['alpha']:g} T={best['temperature']:g} reach "
        f"val agreement {best['agreement']:.1%} vs {base['agreement']:.1%} continuing with the "
        f"stated setting"
    )
    if bugs:
        summary += "; " + "; ".join(bugs)
    return Finding("alpha_sensitivity", status, summary, evidence, details)
