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
    exposure_skipped: str = "no val sequence has 48 attended tokens to prompt and sample from"
    probes: object | None = None  # probes.Probes on rows the main pass sampled (None: no counted row)
    fit_steps: int = 64
    sweep_steps: int = 20
    probe_budget: float | None = None  # seconds per probe (None: the steps alone)
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


def _uniform_share(m: dict) -> float:
    """How far the student's predictive entropy sits from its teacher's toward a uniform guess (log V):
    0 as confident as the teacher, 1 no better than uniform (an untrained or collapsed student)."""
    h_t, h_s = m["teacher"]["entropy"], m["student"]["entropy"]
    room = math.log(max(m["vocab"], 2)) - h_t
    return min(1.0, max(0.0, (h_s - h_t) / room)) if room > 1e-6 else 0.0


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
        "uniform_share": _uniform_share(va),
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
    if evidence["padded_rows"]:
        words = (
            f"{evidence['padded_rows']:,} padded vocabulary rows compared away (--allow-vocab-truncation); "
            f"they hold {dropped:.2%} of a model's probability; {sizes}"
        )
        return Finding("lm_vocab_parity", Status.WARN, words, evidence)
    return Finding("lm_vocab_parity", Status.PASS, f"one vocabulary: {sizes}", evidence)


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
        return Finding("exposure_bias", Status.SKIPPED, f"skipped: {ev.exposure_skipped}", {})
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


FIT_TARGET = 1.0  # a student that can represent its teacher memorizes its argmax on a few sequences
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (1.0, 2.0, 4.0)


def _no_probes(check_id: str) -> Finding:
    return Finding(
        check_id,
        Status.SKIPPED,
        "skipped: no train or val sequence counts a token within its first positions",
        {},
    )


@lm_check("lm_capacity", "Capacity probe (tokens)", 80)
def lm_capacity(ev: LMEvaluation, *, closed_warn: float = 0.30, closed_fail: float = 0.15) -> Finding:
    """Pure-KD fine-tuning of a student copy on a few train sequences: can it fit its teacher there?
    Half the steps at each of probes.LRS, then the one with the lowest train-row KL goes on to the full
    step budget (a quarter of the time budget for each of the four runs); its step size is the one the
    loss-weighting sweep uses. KL, not agreement, picks it: a collapsed student's argmax can sit still
    for many steps while its KL falls.

    closed_*: the share of the way from the checkpoint's train-row agreement to FIT_TARGET the probe
    covers (the insufficient_capacity ramp reads the same share)."""
    from ..checks._probes import n_params
    from .probes import LRS, Objective

    pr = ev.probes
    if pr is None:
        return _no_probes("lm_capacity")
    pure_kd = Objective(0.0, 1.0, 1.0)
    every = max(1, ev.fit_steps // 4)
    # half the steps at each step size, a quarter of the time budget each (fewer steps pick the step
    # size that starts fastest, not the one that fits best), then the best goes on
    trial = {"steps": max(1, ev.fit_steps // 2), "seconds": ev.probe_budget and ev.probe_budget / 4}
    tuned, tried, best_kl = None, {}, math.inf
    for lr in LRS:  # keep only the best trial alive (each holds a student copy and its Adam state)
        run = pr.finetune(pure_kd, steps=trial["steps"], budget_s=trial["seconds"], eval_every=every, lr=lr)
        kl = pr.score(run.model, "train")["kl"]
        tried[f"{lr:g}"] = {"agreement": run.curve[-1][1], "kl": kl}
        if kl < best_kl:  # a diverged run (NaN KL) never wins
            tuned, best_kl = run, kl
        del run
    if tuned is None:
        tuned = pr.finetune(pure_kd, steps=1, budget_s=None, eval_every=1, lr=LRS[0])
    pr.lr = tuned.lr
    if tuned.stopped_by == "steps":  # the best step size goes on to the full step budget
        tuned = pr.finetune(
            pure_kd, steps=ev.fit_steps, budget_s=trial["seconds"], resume=tuned, eval_every=every
        )
    curve = tuned.curve
    start, fit = curve[0][1], curve[-1][1]
    room = FIT_TARGET - start
    closed = min(1.0, max(0.0, (fit - start) / room)) if room > 0.01 else 1.0  # nothing left to fit
    params = {m: n_params(getattr(pr, m)) for m in ("student", "teacher")}
    evidence = {
        "fit_start": start,
        "fit_agreement": fit,
        "fit_target": FIT_TARGET,
        "fit_gain": fit - start,
        "fit_closed_fraction": closed,
        "fit_curve": curve,
        "fit_lr": pr.lr,
        "fit_trials": tried,  # train-row agreement and KL of each step size after the trial steps
        "fit_steps": ev.fit_steps,
        "fit_steps_done": tuned.steps,
        "fit_steps_share": tuned.steps / max(ev.fit_steps, 1),
        "fit_stopped_by": tuned.stopped_by,
        "fit_sequences": len(pr.rows["train"][0]),
        "fit_tokens": pr.counted_tokens("train"),
        "student_params": params["student"],
        "teacher_params": params["teacher"],
        "param_ratio": params["student"] / max(params["teacher"], 1),
    }
    status = grade(closed, closed_warn, closed_fail, higher_is_worse=False, what="the fit probe's progress")
    cut = " (stopped by its time budget)" if tuned.stopped_by == "time" else ""
    return Finding(
        "lm_capacity",
        status,
        f"fine-tuned with pure KD on {evidence['fit_sequences']} train sequences ({evidence['fit_tokens']:,} "
        f"counted tokens) for {tuned.steps} steps{cut} (Adam at {pr.lr:g}, the best of {len(LRS)} tried), "
        f"the student's token agreement there goes {start:.1%} -> {fit:.1%} ({closed:.0%} of the way to "
        f"memorizing its teacher's choices); it has "
        f"{evidence['param_ratio']:.1%} of the teacher's parameters",
        evidence,
    )


def stated_objective(ev: LMEvaluation):
    """The user's KD objective per counted token: their weights, T² choice, reduction, top-k, dtype."""
    from .probes import Objective

    conv = ev.convention
    mult = kd_shares(ev)[0]
    kd = 1.0 if conv.bare_kl else conv.kd_weight
    t2 = conv.temperature**2 if conv.t2 and not conv.bare_kl else 1.0
    return Objective(conv.ce_weight, kd, conv.temperature, t2 * mult, ev.top_k, ev.kd_dtype)


def _rel(a: float, b: float) -> float:
    return 1 - a / b if b > 0 else 0.0


@lm_check("lm_alpha", "Loss weighting sweep (tokens)", 90)
def lm_alpha(ev: LMEvaluation, *, gain_warn: float = 0.08, gain_fail: float = 0.15) -> Finding:
    """Short fine-tuning runs of student copies: with the stated objective (does it still gain?) and
    with per-token textbook objectives over alpha and T (would another weighting gain more?).

    gain_*: val-row token agreement the best sweep point gains over the better of continuing with the
    stated objective and the checkpoint as it stands (high: the best of eight short runs on 32
    sequences is a biased maximum; no cause reads the sweep, only the continue gain)."""
    from .probes import Objective

    pr = ev.probes
    if pr is None:
        return _no_probes("lm_alpha")
    vocab = ev.splits["val"]["vocab"]
    budget = {"steps": ev.sweep_steps, "seconds": ev.probe_budget and ev.probe_budget / 10}
    runs: dict = {}

    def run(obj: Objective) -> dict:
        if obj not in runs:
            tuned = pr.finetune(obj, steps=budget["steps"], budget_s=budget["seconds"], seed=1)
            if budget["seconds"] is not None:  # the first run sets the steps of all the others
                budget.update(steps=tuned.steps, seconds=None, stopped_by=tuned.stopped_by)
            runs[obj] = pr.score(tuned.model, "val")
        return runs[obj]

    def point(a: float, T: float) -> dict:
        return {"alpha": a, "temperature": T, **run(Objective.textbook(a, T))}

    start = pr.score(pr.student, "val")
    base = run(stated_objective(ev))
    alpha_curve = [point(a, ev.convention.temperature) for a in ALPHAS]
    rank = lambda r: (r["agreement"], -r["kl"])  # noqa: E731
    best_alpha = max(alpha_curve, key=rank)["alpha"]
    temp_curve = [point(best_alpha, T) for T in TEMPERATURES]
    best = max(alpha_curve + temp_curve, key=rank)
    # a recommendation must beat both continuing with the stated objective and leaving the checkpoint be
    gain = best["agreement"] - max(base["agreement"], start["agreement"])
    share = kd_shares(ev)[2]
    evidence = {
        "checkpoint_val": start,
        "continue_val": base,
        "continue_gain_agreement": base["agreement"] - start["agreement"],
        "continue_gain_kl_rel": _rel(base["kl"], start["kl"]),
        "gain_agreement": gain,
        "gain_kl_rel": _rel(best["kl"], base["kl"]),
        "kd_share": share,
        "best": {"alpha": best["alpha"], "temperature": best["temperature"]},
        "recommended": _recommend(ev, best, gain, gain_warn, vocab),
        "sweep_steps": budget["steps"],
        "sweep_stopped_by": budget.get("stopped_by", "steps"),
        "sweep_sequences": {s: len(pr.rows[s][0]) for s in ("train", "val")},
        "sweep_tokens": {s: pr.counted_tokens(s) for s in ("train", "val")},
    }
    details = {
        "alpha_curve": alpha_curve,
        "temperature_curve": temp_curve,
        "axis": "alpha (KD weight, per-token textbook objective)",
        "temperature_axis": "T",
    }
    cut = " (as many as the time budget allowed)" if evidence["sweep_stopped_by"] == "time" else ""
    words = (
        f"{budget['steps']} fine-tuning steps{cut} on {evidence['sweep_sequences']['train']} train "
        f"sequences, scored on {evidence['sweep_tokens']['val']:,} val tokens: continuing with the stated "
        "objective moves "
        f"token agreement {start['agreement']:.1%} -> {base['agreement']:.1%}; the best per-token setting "
        f"(alpha {best['alpha']:g} on KD, T {best['temperature']:g}) reaches {best['agreement']:.1%} "
        f"({gain:+.1%})"
    )
    status = grade(gain, gain_warn, gain_fail, what="the sweep's gain")
    return Finding("lm_alpha", status, words, evidence, details)


def _recommend(ev: LMEvaluation, best: dict, gain: float, gain_warn: float, vocab: int) -> dict | None:
    """The sweep's best setting in the user's words (with the KL per counted token); None when it does not
    beat continuing with the stated objective by more than gain_warn or is the stated setting."""
    if gain <= gain_warn:
        return None
    rec = ev.convention.to_user(best["alpha"], best["temperature"], vocab)
    if rec.same_setting(ev.convention) and ev.reduction == "token" and not ev.top_k:
        return None
    extra = "" if ev.reduction == "token" else ", with the KL reduced per counted token"
    return {
        "alpha_kd": best["alpha"],
        "temperature": best["temperature"],
        "user": rec.user_params(),
        "setting": rec.setting() + extra,
    }
