"""The KD convention from the flags a user gives (presets, defaults, conflicts refused in one line), and a
setting written back where the user writes it (Python, a codebase's YAML or command line)."""

from __future__ import annotations

import math

from .convention import LM_REDUCTIONS, KDConvention
from .convention import _r as _round
from .errors import UserError
from .losses import KD_DTYPES
from .presets import PRESETS, Preset


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
) -> KDConvention:
    """The convention from the flags a user gave (None: not given); conflicting flags are an error.
    A causal-LM loss (`task="causal-lm"`) is per counted token unless `reduction` says otherwise, and may
    state a top-k target and the KD term's dtype."""
    name = (preset or "kd").lower()
    if name not in PRESETS:
        raise UserError(f"--convention must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[name]
    _check_conflicts(p, alpha, alpha_on, ce_weight, kd_weight, no_t2, reduction, preset)
    _check_task_flags(task, reduction, top_k, kd_dtype, train_batch_size)
    lm = task == "causal-lm"
    common = dict(
        temperature=p.defaults[2] if temperature is None else temperature,
        t2=p.t2 if p.t2 is not None else not no_t2,
        reduction=p.reduction or reduction or ("token" if lm else "batchmean"),
        train_batch_size=train_batch_size,
        preset=name,
        top_k=top_k,
        kd_dtype=kd_dtype or "float32",
        task=task,
    )
    if ce_weight is not None:
        return KDConvention(
            ce_weight=ce_weight, kd_weight=kd_weight, form=_weights_form(p, ce_weight, kd_weight), **common
        )
    if alpha is not None:
        return KDConvention.from_alpha(alpha, alpha_on or ("ce" if p.form == "alpha_ce" else "kd"), **common)
    ce, kd, _ = p.defaults
    return KDConvention(ce_weight=ce, kd_weight=kd, form=p.form, **common)


def _check_task_flags(task: str, reduction, top_k, kd_dtype, train_batch_size) -> None:
    """The flags that describe a causal-LM loss, refused for images; an LM reduction checked in its words."""
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


def _weights_form(p: Preset, ce: float, kd: float) -> str:
    """--ce-weight/--kd-weight under a preset: its own form where the weights fit it."""
    if p.form == "weights" or p.name in ("kd", "torchdistill"):
        return "weights" if p.name != "torchdistill" or not math.isclose(ce + kd, 1.0) else "alpha_ce"
    if not math.isclose(ce + kd, 1.0):
        raise UserError(f"--convention {p.name} has one alpha, so its weights sum to 1; got {ce:g} + {kd:g}")
    return p.form


def setting_code(conv: KDConvention) -> str:
    """This setting written where the user writes it (Python, the codebase's YAML, its CLI)."""
    p = PRESETS[conv.preset]
    params = conv.user_params()
    if p.syntax == "shell":
        script = {"deit": "main.py", "repdistiller": "train_student.py --distill kd"}.get(p.name, "train.py")
        return f"python {script} " + " ".join(f"{k} {v:g}" for k, v in params.items())
    if p.name == "mdistiller":
        return "\n".join(
            ["KD:", f"  TEMPERATURE: {conv.temperature:g}", "  LOSS:"]
            + [f"    {k}: {params[k]:g}" for k in (p.ce_name, p.kd_name)]
        )
    if p.syntax == "yaml":
        return "\n".join(f"{k}: {v:g}" for k, v in params.items())
    return _python(conv)


def _python(conv: KDConvention) -> str:
    """The loss in PyTorch, with this convention's T² choice and reduction."""
    if conv.task == "causal-lm":  # per counted token (the remedy form; the masks of the CE)
        kd = "(F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, "
        kd += "reduction='none').sum(-1) * mask).sum() / mask.sum()"
        y = "y, ignore_index=-100"
    else:
        kd = f"F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='{conv.reduction}')"
        y = "y"
    kd += " * T**2" if conv.t2 else ""
    if conv.form == "alpha_kd":
        weights = f"alpha = {_round(conv.kd_weight):g}", f"(1 - alpha) * F.cross_entropy(s, {y}) + alpha * kd"
    elif conv.form == "alpha_ce":
        weights = f"alpha = {_round(conv.ce_weight):g}", f"alpha * F.cross_entropy(s, {y}) + (1 - alpha) * kd"
    else:
        weights = (
            f"ce_weight, kd_weight = {_round(conv.ce_weight):g}, {_round(conv.kd_weight):g}",
            f"ce_weight * F.cross_entropy(s, {y}) + kd_weight * kd",
        )
    return f"T = {_round(conv.temperature):g}\n{weights[0]}\nkd = {kd}\nloss = {weights[1]}"
