"""The budgeted fine-tuning probes on tokens: capacity (pure-KD fit) and the loss-weighting sweep."""

from __future__ import annotations

import math

from ..convention import KDConvention
from ..lm.evaluation import LMEvaluation, kd_shares
from .base import Finding, grade, register_check

FIT_TARGET = 1.0  # a student that can represent its teacher memorizes its argmax on a few sequences
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (1.0, 2.0, 4.0)


@register_check(
    "capacity_probe", task="causal-lm", needs=("probe_rows",), title="Capacity probe (tokens)", order=50
)
def lm_capacity_probe(ev: LMEvaluation, *, closed_warn: float = 0.30, closed_fail: float = 0.15) -> Finding:
    """Pure-KD fine-tuning of a student copy on a few train sequences: can it fit its teacher there?
    Half the steps at each of probes.LRS, then the one with the lowest train-row KL goes on to the full
    step budget (a quarter of the time budget for each of the four runs); its step size is the one the
    loss-weighting sweep uses. KL, not agreement, picks it: a collapsed student's argmax can sit still
    for many steps while its KL falls.

    closed_*: the share of the way from the checkpoint's train-row agreement to FIT_TARGET the probe
    covers (the insufficient_capacity ramp reads the same share)."""
    from ._probes import n_params

    pr = ev.probes
    tuned, tried = _fit(ev)
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
        "capacity_probe",
        status,
        f"fine-tuned with pure KD on {evidence['fit_sequences']} train sequences ({evidence['fit_tokens']:,} "
        f"counted tokens) for {tuned.steps} steps{cut} (Adam at {pr.lr:g}, the best of {len(tried)} tried), "
        f"the student's token agreement there goes {start:.1%} -> {fit:.1%} ({closed:.0%} of the way to "
        f"memorizing its teacher's choices); it has "
        f"{evidence['param_ratio']:.1%} of the teacher's parameters",
        evidence,
    )


def _fit(ev: LMEvaluation) -> tuple:
    """The pure-KD fit: each step size for half the steps, then the best goes on; (run, trials)."""
    from ..lm.probes import LRS

    pr = ev.probes
    pure_kd = token_objective(1.0, 1.0, t2=False)
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
    return tuned, tried


def token_objective(alpha_kd: float, temperature: float, t2: bool = True) -> KDConvention:
    """A textbook objective per counted token: (1-a)*CE + a*[T²]*KL_T, in fp32 on the full target."""
    return KDConvention(1.0 - alpha_kd, alpha_kd, temperature, t2=t2, reduction="token", task="causal-lm")


def stated_objective(ev: LMEvaluation) -> KDConvention:
    """The user's KD objective per counted token: their weights, T² choice, reduction, top-k, dtype."""
    return ev.convention


def _rel(a: float, b: float) -> float:
    return 1 - a / b if b > 0 else 0.0


def _rank(r: dict) -> tuple:
    return r["agreement"], -r["kl"]


def _sweep(ev: LMEvaluation) -> tuple:
    """The checkpoint, continuing at the stated objective, and the alpha then T curves, all at one step
    budget (the first run's, under a time budget); (start, continue, alpha curve, T curve, budget)."""
    pr = ev.probes
    budget = {"steps": ev.sweep_steps, "seconds": ev.probe_budget and ev.probe_budget / 10}
    runs: dict = {}

    def run(obj: KDConvention) -> dict:
        if obj not in runs:
            tuned = pr.finetune(obj, steps=budget["steps"], budget_s=budget["seconds"], seed=1)
            if budget["seconds"] is not None:  # the first run sets the steps of all the others
                budget.update(steps=tuned.steps, seconds=None, stopped_by=tuned.stopped_by)
            runs[obj] = pr.score(tuned.model, "val")
        return runs[obj]

    def point(a: float, T: float) -> dict:
        return {"alpha": a, "temperature": T, **run(token_objective(a, T))}

    start = pr.score(pr.student, "val")
    base = run(stated_objective(ev))
    alpha_curve = [point(a, ev.convention.temperature) for a in ALPHAS]
    best_alpha = max(alpha_curve, key=_rank)["alpha"]
    temp_curve = [point(best_alpha, T) for T in TEMPERATURES]
    return start, base, alpha_curve, temp_curve, budget


@register_check(
    "alpha_sensitivity",
    task="causal-lm",
    needs=("probe_rows",),
    title="Loss weighting sweep (tokens)",
    order=60,
)
def lm_alpha_sensitivity(ev: LMEvaluation, *, gain_warn: float = 0.08, gain_fail: float = 0.15) -> Finding:
    """Short fine-tuning runs of student copies: with the stated objective (does it still gain?) and
    with per-token textbook objectives over alpha and T (would another weighting gain more?).

    gain_*: val-row token agreement the best sweep point gains over the better of continuing with the
    stated objective and the checkpoint as it stands (high: the best of eight short runs on 32
    sequences is a biased maximum; no cause reads the sweep, only the continue gain)."""
    pr, vocab = ev.probes, ev.vocab
    start, base, alpha_curve, temp_curve, budget = _sweep(ev)
    best = max(alpha_curve + temp_curve, key=_rank)
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
    return Finding("alpha_sensitivity", status, words, evidence, details)


def _recommend(ev: LMEvaluation, best: dict, gain: float, gain_warn: float, vocab: int) -> dict | None:
    """The sweep's best setting in the user's words (with the KL per counted token); None when it does not
    beat continuing with the stated objective by more than gain_warn or is the stated setting."""
    if gain <= gain_warn:
        return None
    rec = ev.convention.to_user(best["alpha"], best["temperature"], vocab)
    if rec.same_setting(ev.convention) and ev.convention.reduction == "token" and not ev.convention.top_k:
        return None
    extra = "" if ev.convention.reduction == "token" else ", with the KL reduced per counted token"
    return {
        "alpha_kd": best["alpha"],
        "temperature": best["temperature"],
        "user": rec.user_params(),
        "setting": rec.setting() + extra,
        "code": rec.code(),
        "code_lang": rec.code_lang,
    }
