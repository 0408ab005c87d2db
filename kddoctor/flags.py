"""The KD convention from the flags a user gives: presets, defaults, conflicts refused in one line."""

from __future__ import annotations

import math

from .convention import LM_REDUCTIONS, KDConvention
from .errors import UserError
from .losses import KD_DTYPES, TOP_K_RULES
from .presets import PRESETS, Preset

# a missing-mass rule as DistillKit names it (lossfuncs/missing_probability.py)
TOP_K_RULE_NAMES = {"zero": "renormalize", "symmetric_uniform": "tail", "uniform": "tail"}


def resolve(
    *,
    alpha: float | None = None,
    alpha_on: str | None = None,
    ce_weight: float | None = None,
    kd_weight: float | None = None,
    temperature: float | None = None,
    no_t2: bool = False,
    reduction: str | None = None,
    train_batch_size: int | None = None,
    preset: str | None = None,
    task: str = "classification",
    top_k: int | None = None,
    kd_dtype: str | None = None,
    divergence: str | None = None,
    beta: float | None = None,
    lmbda: float | None = None,
    top_k_rule: str | None = None,
) -> KDConvention:
    """The convention from the flags a user gave (None: not given); conflicting flags are an error.
    A causal-LM loss (`task="causal-lm"`) is per counted token unless `reduction` says otherwise, and may
    state a top-k target and its missing-mass rule, the KD term's dtype, its divergence and beta, and the
    share of batches the student sampled (an LM trainer's preset gives its own defaults)."""
    name = (preset or "kd").lower()
    if name not in PRESETS:
        raise UserError(f"--preset (--convention) must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[name]
    if p.lm_only and task != "causal-lm":
        raise UserError(f"--convention {name} is a causal-LM trainer's objective: add --task causal-lm")
    _check_conflicts(p, alpha, alpha_on, ce_weight, kd_weight, no_t2, reduction, preset)
    _check_trainer_flags(p, divergence, beta, lmbda)
    _check_task_flags(task, reduction, top_k, kd_dtype, train_batch_size, top_k_rule)
    lm = task == "causal-lm"
    rule = top_k_rule and dict(p.rule_names).get(top_k_rule, TOP_K_RULE_NAMES.get(top_k_rule, top_k_rule))
    loss_t = p.loss_temperature  # a trainer whose loss runs at a fixed T: --temperature samples
    given_t = p.defaults[2] if temperature is None else temperature
    common = dict(
        temperature=loss_t if loss_t is not None else given_t,
        sample_temperature=temperature if loss_t is not None else None,
        t2=p.t2 if p.t2 is not None else not no_t2,
        reduction=p.reduction or reduction or ("token" if lm else "batchmean"),
        train_batch_size=train_batch_size,
        preset=name,
        top_k=top_k if top_k is not None or not lm else p.top_k,
        kd_dtype=kd_dtype or "float32",
        task=task,
        divergence=divergence or p.divergence or "forward_kl",
        beta=beta if beta is not None else p.beta,
        lmbda=lmbda if lmbda is not None else p.lmbda,
        top_k_rule=rule or p.top_k_rule or "renormalize",
    )
    if ce_weight is not None:
        return KDConvention(
            ce_weight=ce_weight, kd_weight=kd_weight, form=_weights_form(p, ce_weight, kd_weight), **common
        )
    if alpha is not None:
        return KDConvention.from_alpha(alpha, alpha_on or ("ce" if p.form == "alpha_ce" else "kd"), **common)
    ce, kd, _ = p.defaults
    return KDConvention(ce_weight=ce, kd_weight=kd, form=p.form, **common)


def _check_task_flags(task: str, reduction, top_k, kd_dtype, train_batch_size, top_k_rule=None) -> None:
    """The flags that describe a causal-LM loss, refused for images; an LM reduction checked in its words."""
    if top_k_rule is not None and TOP_K_RULE_NAMES.get(top_k_rule, top_k_rule) not in TOP_K_RULES:
        names = ", ".join([*TOP_K_RULES, *TOP_K_RULE_NAMES])
        raise UserError(f"--top-k-rule must be one of {names}, got {top_k_rule!r}")
    if task != "causal-lm":
        if top_k is not None or kd_dtype not in (None, "float32"):
            raise UserError("--teacher-top-k and --kd-dtype describe a causal-LM loss: add --task causal-lm")
        return
    if reduction is not None and reduction not in LM_REDUCTIONS:
        raise UserError(
            f"--kd-reduction for causal LMs must be one of {', '.join(LM_REDUCTIONS)}, got {reduction!r}"
        )
    if reduction == "sum" and train_batch_size is None:
        raise UserError(
            "--kd-reduction sum scales the KD term by the training batch: pass --train-batch-size B"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"--teacher-top-k must be a positive integer, got {top_k}")
    if kd_dtype is not None and kd_dtype not in KD_DTYPES:
        raise UserError(f"--kd-dtype must be one of {', '.join(KD_DTYPES)}, got {kd_dtype!r}")


def _check_conflicts(p: Preset, alpha, alpha_on, ce_weight, kd_weight, no_t2, reduction, preset) -> None:
    """Flags that state one thing twice, differently: exit 2 naming both."""
    named = f"--convention {preset}"
    given = [
        f
        for f, v in (("--alpha", alpha), ("--alpha-on", alpha_on), ("--ce-weight", ce_weight))
        if v is not None
    ]
    if p.fixed_weights and given:
        raise UserError(
            f"{given[0]} conflicts with {named}, whose loss is one divergence term with no CE weight"
        )
    if alpha_on is not None and alpha_on not in ("kd", "ce"):
        raise UserError(f"--alpha-on must be one of kd, ce, got {alpha_on!r}")
    if (ce_weight is None) != (kd_weight is None):
        given = "--ce-weight" if ce_weight is not None else "--kd-weight"
        raise UserError(f"{given} needs its pair: state both --ce-weight and --kd-weight")
    if ce_weight is not None and (alpha is not None or alpha_on is not None):
        other = "--alpha" if alpha is not None else "--alpha-on"
        raise UserError(f"{other} conflicts with --ce-weight/--kd-weight: state the weights one way")
    if alpha is not None and p.form == "weights":
        raise UserError(
            f"--alpha conflicts with {named}, which states two weights ({p.ce_name}, {p.kd_name}): "
            "pass them as --ce-weight and --kd-weight"
        )
    if alpha_on in ("kd", "ce") and p.name != "kd" and p.form != f"alpha_{alpha_on}":
        raise UserError(f"--alpha-on {alpha_on} conflicts with {named}, whose alpha weights another term")
    if no_t2 and p.t2:
        raise UserError(f"--no-t2 conflicts with {named}, which multiplies the KD term by T²")
    if reduction is not None and p.reduction is not None and reduction != p.reduction:
        raise UserError(
            f"--kd-reduction {reduction} conflicts with {named}, which reduces by '{p.reduction}'"
        )


def _check_trainer_flags(p: Preset, divergence, beta, lmbda) -> None:
    """An LM trainer's objective stated twice, differently: a divergence other than the one term its loss
    computes (trl-gkd, trl-distill, minillm), a beta for a divergence that has none, or a share of its own
    samples for a trainer that samples every batch itself (minillm)."""
    named = f"--convention {p.name}"
    if divergence is not None and p.fixed_weights and p.divergence and divergence != p.divergence:
        ends = " (its --beta 0 is the forward KL end, 1 the reverse KL end)" if p.divergence == "jsd" else ""
        raise UserError(
            f"--divergence {divergence} conflicts with {named}, which computes {p.divergence}{ends}"
        )
    div = divergence or p.divergence or "forward_kl"
    if beta is not None and div not in ("jsd", "skew_forward_kl", "skew_reverse_kl"):
        source = "--divergence" if divergence else named if p.divergence else "the default"
        raise UserError(
            f"--beta weighs a JSD or skew divergence, not {div} ({source}): drop --beta or state "
            "--divergence jsd"
        )
    if lmbda is not None and p.name == "minillm" and lmbda != p.lmbda:
        raise UserError(
            f"--lmbda {lmbda:g} conflicts with {named}, which trains on its own samples (lmbda 1)"
        )


def _weights_form(p: Preset, ce: float, kd: float) -> str:
    """--ce-weight/--kd-weight under a preset: its own form where the weights fit it."""
    if p.form == "weights" or p.name in ("kd", "torchdistill"):
        return "weights" if p.name != "torchdistill" or not math.isclose(ce + kd, 1.0) else "alpha_ce"
    if not math.isclose(ce + kd, 1.0):
        raise UserError(f"--convention {p.name} has one alpha, so its weights sum to 1; got {ce:g} + {kd:g}")
    return p.form
