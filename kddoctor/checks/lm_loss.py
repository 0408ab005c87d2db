"""The causal-LM KD term as stated: its reduction, precision and top-k target, measured on the data."""

from __future__ import annotations

from ..convention_text import support_words, top1_support
from ..lm.evaluation import LMEvaluation, kd_shares
from ..losses import divergence_word
from .base import Finding, Status, grade, register_check, worst


@register_check("lm_reduction", task="causal-lm", title="KD reduction accounting", order=42)
def lm_reduction(
    ev: LMEvaluation, *, share_shift_warn: float = 0.05, share_shift_fail: float = 0.15
) -> Finding:
    """The KD term's effective share of the loss under the stated reduction at the measured lengths."""
    ft = ev.splits["train"]["facts"]
    mult, stated, share = kd_shares(ev)
    evidence = {
        "reduction": ev.convention.reduction,
        "tokens_per_sequence": ft["tokens_per_sequence"],
        "kd_multiplier": mult,
        "kd_share_stated": stated,
        "kd_share_effective": share,
        "share_shift": abs(share - stated),
    }
    status = grade(abs(share - stated), share_shift_warn, share_shift_fail, what="the KD share shift")
    what = {
        "token": "per counted token",
        "batchmean": "'batchmean' over [B, L, V] (divided by the batch only)",
        "mean": "'mean' over [B, L, V] (divided by the vocabulary too)",
        "sum": "'sum' over [B, L, V]",
    }[ev.convention.reduction]
    return Finding(
        "lm_reduction",
        status,
        f"KL reduced {what}: at {ft['tokens_per_sequence']:.1f} counted tokens per sequence the KD term "
        f"is worth {mult:.3g}x per token, so it carries {share:.0%} of the loss"
        + (
            f", not the {stated:.0%} the weights state"
            if abs(share - stated) >= 0.005
            else ", as the weights state"
        ),
        evidence,
    )


@register_check(
    "lm_precision", task="causal-lm", needs=("teacher_distribution",), title="KD loss precision", order=44
)
def lm_precision(
    ev: LMEvaluation, *, rel_error_fail: float = 0.10, zero_fraction_fail: float = 0.05
) -> Finding:
    """The KD term's KL in the training dtype next to fp32, on a sample of counted val tokens."""
    p = ev.splits["val"]["facts"]["precision"]
    rel = abs(p["kl_dtype"] - p["kl_fp32"]) / max(p["kl_fp32"], 1e-12)
    evidence = {
        "dtype": p["dtype"],
        "divergence": p.get("divergence", "forward_kl"),
        "tokens": p["tokens"],
        "kl_fp32": p["kl_fp32"],
        "kl_dtype": p["kl_dtype"],
        "rel_error": rel,
        "zero_fraction": p["zero_fraction"],
        "negative_fraction": p.get("negative_fraction", 0.0),
        "nonfinite_fraction": p["nonfinite_fraction"],
    }
    what = divergence_word(evidence["divergence"])  # the stated divergence, in the report's words
    value = f"{what} {p['kl_fp32']:.4f} nats/token at T={p['temperature']:g}"
    if p["dtype"] == "float32":
        return Finding(
            "lm_precision",
            Status.PASS,
            f"the KD loss is computed in float32 ({value} on {p['tokens']:,} val tokens); pass --kd-dtype "
            "when your loss ran in bf16 or fp16",
            evidence,
        )
    status = worst(
        grade(rel, rel_error_fail / 2, rel_error_fail, what="the KL's relative error"),
        grade(p["zero_fraction"], zero_fraction_fail / 2, zero_fraction_fail, what="the zero-KL fraction"),
        Status.FAIL if p["nonfinite_fraction"] > 0 else Status.PASS,
    )
    negative = (
        f" (negative on {evidence['negative_fraction']:.0%}: a divergence cannot be)"
        if evidence["negative_fraction"] > 0
        else ""
    )
    return Finding(
        "lm_precision",
        status,
        f"in {p['dtype']} the KD term's {what} at T={p['temperature']:g} reads {p['kl_dtype']:.4g} "
        f"nats/token where fp32 gives {p['kl_fp32']:.4g} ({rel:.0%} off); it reads 0 or less on "
        f"{p['zero_fraction']:.0%} of {p['tokens']:,} val tokens{negative} and is not finite on "
        f"{p['nonfinite_fraction']:.0%}",
        evidence,
    )


@register_check("lm_topk", task="causal-lm", needs=("stated_top_k",), title="Top-k teacher targets", order=46)
def lm_topk(
    ev: LMEvaluation,
    *,
    dropped_warn: float = 0.05,
    dropped_fail: float = 0.10,
    negative_fail: float = 0.25,
    trivial_warn: float = 0.10,
    trivial_fail: float = 0.25,
) -> Finding:
    """How much of the teacher's probability a top-k KD target (--teacher-top-k) kept, under the trainer's
    missing-mass rule (--top-k-rule): renormalizing the kept mass (DistillKit's ZERO) throws the rest
    away; one tail bucket (SYMMETRIC_UNIFORM, verl's tail) keeps its mass but not its shape; dropping it
    leaves a sum that goes negative (verl clamped such a loss to 0 on 89 % of steps).

    dropped_*: teacher mass the target loses; negative_fail: share of train tokens whose truncated sum
    is negative (rule 'none'); trivial_*: share of train tokens where the stated divergence is 0 while the
    models differ (a one-class support renormalized, TRL's server path without loss_add_tail)."""
    f, conv = ev.splits["train"]["facts"], ev.convention
    k, rule = conv.top_k, conv.top_k_rule
    kept = f["teacher_kept_mass"]
    seen = ", ".join(f"top-{j} {m:.0%}" for j, m in kept.items())
    dropped = 0.0 if conv.keeps_tail else 1 - kept[k]
    top1 = top1_support(conv)  # TRL's server path for beta > 0: the teacher's top token and the text's
    lost = f"up to {dropped:.1%}" if top1 else f"{dropped:.1%}"  # the text's token may keep some more
    negative = f.get("truncated_negative")
    evidence = {"kept_mass": kept, "top_k": k, "rule": rule, "dropped_target_mass": dropped}
    status = grade(dropped, dropped_warn, dropped_fail, what="the dropped teacher mass")
    how = {
        "renormalize": f"renormalizing it drops {lost}",
        "tail": f"its tail bucket keeps the other {1 - kept[k]:.1%} as one class",
        "none": f"dropping the rest leaves {dropped:.1%} out of a sum that is no divergence",
        "tail_at_t": f"its tail bucket (TRL's loss_add_tail) keeps the other {1 - kept[k]:.1%} as one class",
        "renormalize_both": f"renormalizing both sides over it drops {lost}",
    }[rule]
    what = f"a top-{k} KD target keeps {kept[k]:.1%} of the teacher's probability on train tokens"
    if top1:
        what = f"a top-1 support ({support_words(conv)}) keeps at least {kept[1]:.1%} of the teacher's "
        what += "probability on train tokens"
    if negative is not None:
        evidence["truncated_negative"] = negative
        status = worst(status, grade(negative, negative_fail / 2, negative_fail, what="the negative share"))
        how += f"; that sum is negative on {negative:.0%} of train tokens (a clamp at 0 stops their gradient)"
    trivial = (f.get("precision") or {}).get("trivial_fraction")
    if trivial is not None:
        evidence["trivial_zero_share"] = trivial
    if trivial:
        status = worst(status, grade(trivial, trivial_warn, trivial_fail, what="the share read as 0"))
        how += (
            f"; the KD term reads 0 on {trivial:.0%} of train tokens where the two models differ (a support "
            "of one class renormalized: no gradient there)"
        )
    return Finding(
        "lm_topk",
        status,
        f"{what}; {how} ({seen})",
        evidence,
    )
