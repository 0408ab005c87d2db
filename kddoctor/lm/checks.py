"""The causal-LM checks: each reads one `LMEvaluation` and returns a `Finding`, like the image checks.

They live in their own registry (`LM_CHECKS`), so an image run never lists them. Each check's
keyword-only defaults are its thresholds (recorded and shown like the image checks'); a NaN it grades
makes it `skipped`. Evidence keys are what `lm_causes.toml` reads.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..checks.base import CheckSpec, Finding, Status, grade, run_check, worst
from ..convention import KDConvention

LM_CHECKS: dict[str, CheckSpec] = {}
REDUCTIONS = ("token", "batchmean", "mean", "sum")  # how a causal-LM KD loss reduced its KL
SEQUENCE_TOKENS_Z = 16  # tokens per sequence counted as independent when a gap's z-score is computed


@dataclass
class LMEvaluation:
    """Everything the LM checks read: both splits' token metrics and facts, and the run's KD setting."""

    splits: dict
    convention: KDConvention
    reduction: str = "token"
    top_k: int | None = None
    kd_dtype: str = "float32"
    train_batch_size: int | None = None
    tokenizers: dict = field(default_factory=dict)
    exposure: dict | None = None
    capabilities: set = field(default_factory=lambda: {"train", "val"})

    def side(self, split: str) -> None:  # min_samples is not used by LM checks
        return None


def lm_check(check_id: str, title: str, order: int, needs: tuple[str, ...] = ()) -> Callable:
    """Register an LM check (the image registry's CheckSpec, in LM_CHECKS)."""

    def deco(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters.values()
        thresholds = tuple((p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY)
        doc = (fn.__doc__ or "").strip().splitlines()
        LM_CHECKS[check_id] = CheckSpec(
            check_id, fn, needs, title, doc[0] if doc else "", order, (), thresholds
        )
        return fn

    return deco


def run_lm_checks(ev: LMEvaluation, debug: bool = False) -> list[Finding]:
    return [run_check(spec, ev, debug) for spec in sorted(LM_CHECKS.values(), key=lambda s: s.order)]


def _z(diff: float, p: float, m: dict) -> float:
    n = min(m["tokens"], SEQUENCE_TOKENS_Z * m["facts"]["sequences"])
    se = math.sqrt(max(p * (1 - p), 1e-6) * 2 / max(n, 1))
    return diff / se


@lm_check("lm_gap", "Token generalization gap", 10)
def lm_gap(
    ev: LMEvaluation,
    *,
    agreement_excess_warn: float = 0.03,
    agreement_excess_fail: float = 0.08,
    loss_excess_warn: float = 0.10,
    loss_excess_fail: float = 0.30,
) -> Finding:
    """Student train->val degradation per counted token beyond the teacher's own (agreement, NLL, KL)."""
    tr, va = ev.splits["train"], ev.splits["val"]
    t_drop = tr["teacher"]["acc"] - va["teacher"]["acc"]
    excess = (tr["agreement"] - va["agreement"]) - t_drop
    loss_excess = (va["student"]["loss"] - tr["student"]["loss"]) - (
        va["teacher"]["loss"] - tr["teacher"]["loss"]
    )
    val_gap = va["teacher"]["acc"] - va["student"]["acc"]
    evidence = {
        "train_agreement": tr["agreement"],
        "val_agreement": va["agreement"],
        "excess_agreement_gap": excess,
        "excess_agreement_gap_z": _z(excess, va["agreement"], va),
        "excess_loss_gap": loss_excess,
        "excess_kl_gap": va["kl"] - tr["kl"],
        "teacher_val_drop": t_drop,
        "teacher_val_drop_z": _z(t_drop, va["teacher"]["acc"], va),
        "val_acc_gap": val_gap,
        "val_acc_gap_z": _z(val_gap, va["student"]["acc"], va),
        "val_nll_gap": va["student"]["loss"] - va["teacher"]["loss"],
        "entropy_ratio": va["student"]["entropy"] / max(va["teacher"]["entropy"], 1e-9),
    }
    status = worst(
        grade(excess, agreement_excess_warn, agreement_excess_fail, what="the excess agreement gap"),
        grade(loss_excess, loss_excess_warn, loss_excess_fail, what="the excess loss gap"),
    )
    return Finding(
        "lm_gap",
        status,
        f"token agreement {tr['agreement']:.1%} on train, {va['agreement']:.1%} on val "
        f"({excess:+.1%} beyond the teacher's own accuracy drop); student val NLL "
        f"{loss_excess:+.3f} nats/token beyond the teacher's train->val change "
        f"({tr['tokens']:,} train and {va['tokens']:,} val tokens)",
        evidence,
    )


def _differs(a: dict | None, b: dict | None, key: str) -> int | None:
    return None if not a or not b else int(a.get(key) != b.get(key))


@lm_check("lm_vocab_parity", "Tokenizer and vocabulary parity", 20)
def lm_vocab_parity(
    ev: LMEvaluation, *, dropped_mass_fail: float = 0.01, teacher_nll_excess_fail: float = 0.05
) -> Finding:
    """Vocabulary sizes and padded rows, the tokenizers (hash, special ids), and whether the teacher
    predicts this text worse than its own student (it saw other token ids)."""
    va = ev.splits["val"]
    tt, ts = ev.tokenizers.get("teacher"), ev.tokenizers.get("student")
    excess = va["teacher"]["loss"] - va["student"]["loss"]
    evidence = {
        "teacher_vocab": va["teacher_vocab"],
        "student_vocab": va["student_vocab"],
        "padded_rows": abs(va["teacher_vocab"] - va["student_vocab"]),
        "teacher_dropped_mass": va["facts"]["teacher_dropped_mass"],
        "student_dropped_mass": va["facts"]["student_dropped_mass"],
        "teacher_nll_excess": excess,
        "tokenizers": {"teacher": tt, "student": ts},
    }
    flags = {
        "tokenizer_differs": _differs(tt, ts, "hash"),
        "special_tokens_differ": _differs(tt, ts, "special_ids"),
        "chat_template_differs": _differs(tt, ts, "chat_template_hash"),
    }
    evidence.update({k: v for k, v in flags.items() if v is not None})
    dropped = max(evidence["teacher_dropped_mass"], evidence["student_dropped_mass"])
    problems = []
    if flags["tokenizer_differs"]:
        problems.append("the two tokenizers differ (vocabulary or special tokens)")
    elif flags["special_tokens_differ"] or flags["chat_template_differs"]:
        problems.append("the tokenizers' special tokens or chat templates differ")
    if dropped > dropped_mass_fail:
        problems.append(f"the compared vocabulary drops {dropped:.1%} of a model's probability mass")
    if excess > teacher_nll_excess_fail:
        problems.append(
            f"the teacher predicts val text {excess:.3f} nats/token worse than its own student "
            "(it was trained on other token ids)"
        )
    sizes = f"vocabularies {va['teacher_vocab']:,} (teacher) and {va['student_vocab']:,} (student)"
    if tt is None or ts is None:
        sizes += "; no tokenizer to compare (hf: directories carry theirs)"
    if problems:
        return Finding("lm_vocab_parity", Status.FAIL, "; ".join(problems) + f"; {sizes}", evidence)
    status = Status.WARN if evidence["padded_rows"] else Status.PASS
    return Finding("lm_vocab_parity", status, f"one vocabulary: {sizes}", evidence)


@lm_check("lm_mask_parity", "Loss-mask parity", 30)
def lm_mask_parity(
    ev: LMEvaluation,
    *,
    pad_excess_warn: float = 0.001,
    pad_excess_fail: float = 0.004,
    mask_shift_warn: float = 0.05,
    mask_shift_fail: float = 0.15,
) -> Finding:
    """Which tokens each split counts, and whether the student learned to predict padding."""
    ft, fv = ev.splits["train"]["facts"], ev.splits["val"]["facts"]
    shift = abs(ft["counted_of_attended"] - fv["counted_of_attended"])
    evidence = {
        "train_counted_of_attended": ft["counted_of_attended"],
        "val_counted_of_attended": fv["counted_of_attended"],
        "mask_shift": shift,
        "uncounted_fraction": 1 - ft["counted_fraction"],
        "pad_fraction": ft["pad_fraction"],
        "prompt_fraction": ft["prompt_fraction"],
        "pad_id": fv["pad_id"],
    }
    statuses = [grade(shift, mask_shift_warn, mask_shift_fail, what="the mask shift")]
    words = (
        f"train counts {ft['counted_of_attended']:.0%} of attended tokens, "
        f"val {fv['counted_of_attended']:.0%}; "
        f"a loss that ignored the masks would include {1 - ft['counted_fraction']:.0%} uncounted train "
        f"positions ({ft['pad_fraction']:.0%} padding, {ft['prompt_fraction']:.0%} prompt)"
    )
    if fv["student_pad_mass"] is not None:
        excess = fv["student_pad_mass"] - fv["teacher_pad_mass"]
        evidence.update(
            student_pad_mass=fv["student_pad_mass"],
            teacher_pad_mass=fv["teacher_pad_mass"],
            student_pad_excess=excess,
        )
        statuses.append(grade(excess, pad_excess_warn, pad_excess_fail, what="the student's pad mass"))
        words += (
            f"; on counted val tokens the student puts {fv['student_pad_mass']:.2%} on the pad token "
            f"(id {fv['pad_id']}), the teacher {fv['teacher_pad_mass']:.2%}"
        )
    return Finding("lm_mask_parity", worst(*statuses), words, evidence)


def kd_multiplier(reduction: str, tokens_per_sequence: float, vocab: int, batch: int | None) -> float:
    """What the stated reduction does to a per-token KD term on [B, L, V] logits."""
    return {
        "token": 1.0,
        "batchmean": tokens_per_sequence,  # divides the token sum by B only
        "mean": 1.0 / vocab,  # divides by every element, the vocabulary included
        "sum": tokens_per_sequence * float(batch or 1),
    }[reduction]


def kd_shares(ev: LMEvaluation) -> tuple[float, float, float]:
    """(the stated reduction's per-token multiplier of the KD term, the KD share of the loss the weights
    state, the share it really has at the measured tokens per train sequence)."""
    vocab = ev.splits["train"]["vocab"]
    tokens = ev.splits["train"]["facts"]["tokens_per_sequence"]
    mult = kd_multiplier(ev.reduction, tokens, vocab, ev.train_batch_size)
    eff = ev.convention.effective(vocab)  # per token: T² and the weights (a 'token' reduction is 1)
    kd = eff["kd_effective"] * mult
    return mult, eff["kd_share"], kd / (kd + eff["ce"]) if kd + eff["ce"] > 0 else 0.0


@lm_check("lm_reduction", "KD reduction accounting", 40)
def lm_reduction(
    ev: LMEvaluation, *, share_shift_warn: float = 0.05, share_shift_fail: float = 0.15
) -> Finding:
    """The KD term's effective share of the loss under the stated reduction at the measured lengths."""
    ft = ev.splits["train"]["facts"]
    mult, stated, share = kd_shares(ev)
    evidence = {
        "reduction": ev.reduction,
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
    }[ev.reduction]
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


@lm_check("lm_precision", "KD loss precision", 50)
def lm_precision(
    ev: LMEvaluation, *, rel_error_fail: float = 0.10, zero_fraction_fail: float = 0.05
) -> Finding:
    """The KD term's KL in the training dtype next to fp32, on a sample of counted val tokens."""
    p = ev.splits["val"]["facts"]["precision"]
    rel = abs(p["kl_dtype"] - p["kl_fp32"]) / max(p["kl_fp32"], 1e-12)
    evidence = {
        "dtype": p["dtype"],
        "tokens": p["tokens"],
        "kl_fp32": p["kl_fp32"],
        "kl_dtype": p["kl_dtype"],
        "rel_error": rel,
        "zero_fraction": p["zero_fraction"],
        "nonfinite_fraction": p["nonfinite_fraction"],
    }
    if p["dtype"] == "float32":
        return Finding(
            "lm_precision",
            Status.PASS,
            f"the KD loss is computed in float32 (KL {p['kl_fp32']:.4f} nats/token at T={p['temperature']:g} "
            f"on {p['tokens']:,} val tokens); pass --kd-dtype when your loss ran in bf16 or fp16",
            evidence,
        )
    status = worst(
        grade(rel, rel_error_fail / 2, rel_error_fail, what="the KL's relative error"),
        grade(p["zero_fraction"], zero_fraction_fail / 2, zero_fraction_fail, what="the zero-KL fraction"),
        Status.FAIL if p["nonfinite_fraction"] > 0 else Status.PASS,
    )
    return Finding(
        "lm_precision",
        status,
        f"in {p['dtype']} the KD term's KL at T={p['temperature']:g} reads {p['kl_dtype']:.4g} nats/token "
        f"where fp32 gives {p['kl_fp32']:.4g} ({rel:.0%} off); it reads 0 on {p['zero_fraction']:.0%} "
        f"of {p['tokens']:,} val tokens and is not finite on {p['nonfinite_fraction']:.0%}",
        evidence,
    )


@lm_check("lm_topk", "Top-k teacher targets", 60)
def lm_topk(ev: LMEvaluation, *, dropped_warn: float = 0.05, dropped_fail: float = 0.10) -> Finding:
    """How much of the teacher's probability a top-k truncated KD target kept (--teacher-top-k)."""
    f = ev.splits["train"]["facts"]
    kept = f["teacher_kept_mass"]
    seen = ", ".join(f"top-{k} {m:.0%}" for k, m in kept.items())
    evidence = {"kept_mass": kept, "top_k": ev.top_k}
    if not ev.top_k:
        return Finding(
            "lm_topk",
            Status.SKIPPED,
            f"skipped: no --teacher-top-k stated (the full distribution was the KD target); the teacher "
            f"keeps {seen} of its mass on train tokens",
            evidence,
        )
    dropped = 1 - kept[ev.top_k]
    evidence["dropped_target_mass"] = dropped
    return Finding(
        "lm_topk",
        grade(dropped, dropped_warn, dropped_fail, what="the dropped teacher mass"),
        f"a top-{ev.top_k} KD target keeps {kept[ev.top_k]:.1%} of the teacher's probability on train "
        f"tokens; renormalizing it drops {dropped:.1%} ({seen})",
        evidence,
    )


@lm_check("exposure_bias", "Exposure bias", 70)
def exposure_bias(ev: LMEvaluation, *, ratio_warn: float = 1.5, ratio_fail: float = 2.5) -> Finding:
    """KL(t||s) on the student's own sampled continuations vs on teacher-forced val text."""
    e = ev.exposure
    if e is None:
        return Finding(
            "exposure_bias", Status.SKIPPED, "skipped: no val sequence is long enough to sample from", {}
        )
    ratio = e["kl_on_policy"] / max(e["kl_teacher_forced"], 1e-9)
    evidence = {
        "kl_teacher_forced": e["kl_teacher_forced"],
        "kl_on_policy": e["kl_on_policy"],
        "ratio": ratio,
        "excess_kl": e["kl_on_policy"] - e["kl_teacher_forced"],
        "sequences": e["sequences"],
        "new_tokens": e["new_tokens"],
    }
    return Finding(
        "exposure_bias",
        grade(ratio, ratio_warn, ratio_fail, what="the on-policy KL ratio"),
        f"on {e['sequences']} continuations of {e['new_tokens']} tokens it sampled itself, the student is "
        f"{e['kl_on_policy']:.3f} nats/token from its teacher vs {e['kl_teacher_forced']:.3f} under teacher "
        f"forcing ({ratio:.2f}x)",
        evidence,
    )
