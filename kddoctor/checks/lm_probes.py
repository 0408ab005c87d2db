"""The budgeted fine-tuning probes on tokens: capacity (pure-KD fit) and the loss-weighting sweep."""

from __future__ import annotations

import math

from ..convention import KDConvention
from ..lm.evaluation import LMEvaluation, kd_shares
from ..lm.probes import reads_own_divergence
from ..losses import DIVERGENCE_NAMES
from ..presets import PRESETS
from .base import Finding, Status, grade, register_check, worst

FIT_TARGET = 1.0  # a student that can represent its teacher memorizes its argmax on a few sequences
# the LM zoo's healthy students reach down to 1/20 of their teacher's parameters and 1/4 of its hidden
# width; a student below 1/30 of the parameters or 1/6 of the width (the tuning draw's mildest too-small
# student: 1/29 and 1/8) that misses much of its teacher's gain even on its own train text is smaller
# than any healthy reference
SMALL_RATIO = 1 / 30
SMALL_WIDTH = 1 / 6
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = (1.0, 2.0, 4.0)
SWEEP_NOISE = 0.01  # a sweep gain under a point of agreement is said as none (its val rows: ~0.5-point noise)


@register_check(
    "capacity_probe", task="causal-lm", needs=("probe_rows",), title="Capacity probe (tokens)", order=50
)
def lm_capacity_probe(
    ev: LMEvaluation, *, train_share_warn: float = 0.60, train_share_fail: float = 0.75
) -> Finding:
    """Can the student match its teacher on its own training text? The student's train-split NLL next to
    its teacher's (as a share of the teacher's gain over a unigram model it misses), the parameter and
    width ratios, and a pure-KD fit on the probes' train rows (more tokens than its steps can memorize):
    half the steps at each of probes.LRS, then the step size with the lowest train-row KL goes on to the
    full budget (a quarter of the time budget each); the val rows' KL along the way says how much of the
    fit generalizes (a student still learning gains there too; one at its capacity does not).

    train_share_*: the share of the teacher's gain the student misses on its own train text (healthy
    students at 1/2 to 1/20 of their teacher's size stay below the warn level in the LM zoo)."""
    from .lm_gap import behind, nll_unread

    tuned, tried = _fit(ev)
    gap = behind(ev)
    evidence = {
        "train_gap_share": gap["train_gap_share"],
        "train_gap_share_ci": gap["train_gap_share_ci"],
        "val_gap_share": gap["val_gap_share"],
        "train_agreement": ev.train["agreement"],
        **_fit_evidence(ev, tuned, tried),
        **_fit_gap_shares(ev, tuned),
    }
    # a student whose objective does not minimize teacher-forced NLL (reverse KL, JSD, its own samples)
    # is judged where pure KD toward its teacher's whole distribution takes it on its train rows: a
    # healthy one gets there in a few steps, one too small does not
    unread = nll_unread(ev.convention)
    share = gap["train_gap_share"]
    if unread:  # the fit's relative cut on the probe rows, applied to the split's share (rows differ)
        start, fit = evidence["fit_train_gap_share_start"], evidence["fit_train_gap_share"]
        share = share * fit / start if start > 0.05 else fit
    evidence["capacity_gap_share"] = share
    evidence["capacity_gap_reads"] = (
        f" after pure KD on {evidence['fit_sequences']} of its train sequences (the stated objective, "
        f"{unread}, does not minimize NLL)"
        if unread
        else ""
    )
    evidence.update(_sizes(ev, share))
    status = grade(share, train_share_warn, train_share_fail, what="the train gap share")
    return Finding("capacity_probe", status, _capacity_words(ev, evidence, tuned), evidence)


def _fit_gap_shares(ev: LMEvaluation, tuned) -> dict:
    """The share of its teacher's gain over a unigram model the student misses on the probes' train rows,
    before and after the pure-KD fit."""
    from ..lm.evaluation import share_of_gain, unigram_nll

    pr, uni = ev.probes, unigram_nll(ev)["train"]
    out = {}
    for key, model in (("fit_train_gap_share_start", pr.student), ("fit_train_gap_share", tuned.model)):
        r = pr.score(model, "train")
        out[key] = share_of_gain(r["loss"], r["teacher_loss"], uni)
    return out


def _fit_evidence(ev: LMEvaluation, tuned, tried: dict) -> dict:
    """The pure-KD fit's curve read: where it started and got, the share of the way to FIT_TARGET it
    covered, how much of it generalized to the val rows, and how its budget was spent."""
    pr, curve = ev.probes, tuned.curve
    start, fit = curve[0][1], curve[-1][1]
    room = FIT_TARGET - start
    return {
        "fit_start": start,
        "fit_agreement": fit,
        "fit_target": FIT_TARGET,
        "fit_gain": fit - start,
        "fit_closed_fraction": min(1.0, max(0.0, (fit - start) / room)) if room > 0.01 else 1.0,
        "fit_val_kl_drop": _rel(curve[-1][2], curve[0][2]),
        "fit_curve": curve,
        "fit_lr": pr.lr,
        "fit_trials": tried,  # train-row agreement and KL of each step size after the trial steps
        "fit_steps": ev.fit_steps,
        "fit_steps_done": tuned.steps,
        "fit_steps_share": tuned.steps / max(ev.fit_steps, 1),
        "fit_stopped_by": tuned.stopped_by,
        "fit_sequences": len(pr.rows["train"][0]),
        "fit_tokens": pr.counted_tokens("train"),
    }


def _sizes(ev: LMEvaluation, train_share: float) -> dict:
    """Parameter and width ratios, and the train-side shortfall of a student far below the healthy
    reference's sizes (below SMALL_RATIO of its teacher's parameters or SMALL_WIDTH of its hidden width;
    0 otherwise)."""
    from ._probes import n_params

    params = {m: n_params(getattr(ev.probes, m)) for m in ("student", "teacher")}
    ratio = params["student"] / params["teacher"] if params["teacher"] else None  # none: an offline capture
    widths = _widths(ev)
    small = (ratio is not None and ratio < SMALL_RATIO) or widths.get("width_ratio", 1.0) < SMALL_WIDTH
    size = [f"1/{1 / ratio:.0f} of its teacher's parameters"] if ratio else []
    if widths:
        size.append(
            f"1/{1 / widths['width_ratio']:.0f} of its width "
            f"({widths['student_width']} of {widths['teacher_width']})"
        )
    return {
        "student_params": params["student"],
        "teacher_params": params["teacher"],
        "param_ratio": ratio,
        "small_student_shortfall": train_share if small else 0.0,
        "size_words": " and ".join(size) or "a size unknown",
        **widths,
    }


NO_GAIN = 10.0  # a share beyond 1,000 %: the teacher gains (next to) nothing over a unigram model


def _capacity_words(ev: LMEvaluation, e: dict, tuned) -> str:
    cut = " (stopped by its time budget)" if tuned.stopped_by == "time" else ""
    shares = (e["train_gap_share"], e["fit_train_gap_share_start"], e["fit_train_gap_share"])
    gainless = any(abs(x) > NO_GAIN for x in shares)  # a teacher of other ids, say: no share to miss
    pushed = (
        ""
        if gainless
        else f", and the share it misses on those rows goes {e['fit_train_gap_share_start']:.0%} -> "
        f"{e['fit_train_gap_share']:.0%}"
    )
    missed = (
        "its teacher does no better than a unigram model, so there is no gain to miss"
        if gainless
        else f"the student misses {e['train_gap_share']:.0%} of its teacher's gain over a unigram model"
    )
    width = f", {e['width_ratio']:.0%} of its width" if "width_ratio" in e else ""
    size = (
        f"it has {e['param_ratio']:.1%} of the teacher's parameters{width}"
        if e["param_ratio"] is not None
        else "the teacher is an offline capture (no parameters to compare)"
    )
    return (
        f"on its own train text {missed} (token agreement {e['train_agreement']:.1%}); fine-tuned with "
        f"pure KD on {e['fit_sequences']} train sequences ({e['fit_tokens']:,} counted tokens) for "
        f"{tuned.steps} steps{cut} (Adam at {e['fit_lr']:g}, the best of {len(e['fit_trials'])} tried), "
        f"its agreement there goes {e['fit_start']:.1%} -> {e['fit_agreement']:.1%} and its val-row KL "
        f"changes by {-e['fit_val_kl_drop']:+.0%}{pushed}; {size}"
    )


def _widths(ev: LMEvaluation) -> dict:
    """Hidden widths of both models (their pooled features), when the pass tapped them."""
    feats = ev.val.get("features") or {}
    if len(feats) != 2:
        return {}
    w = {m: int(feats[m].shape[1]) for m in ("student", "teacher")}
    return {
        "student_width": w["student"],
        "teacher_width": w["teacher"],
        "width_ratio": w["student"] / w["teacher"],
    }


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


def _continue(ev: LMEvaluation) -> dict:
    """Continuing at the stated objective at each of probes.CONTINUE_LRS (where a finished run's schedule
    ends) for the fit probe's step budget, val-row KL read along the way: a student that has not
    converged keeps gaining through the second half; a converged one holds still, or gains only in its
    first steps (a smaller step size settles a run that ended at a large one). The first run stops at
    its step or its time budget, and the others run as many steps, so every step size is compared at
    the same number of steps. {lr: val score, curve, steps, stopped_by}."""
    from ..lm.probes import CONTINUE_LRS

    pr, obj = ev.probes, stated_objective(ev)
    every = max(1, ev.fit_steps // 4)
    seconds = ev.probe_budget and ev.probe_budget / 6
    lmbda = ev.convention.lmbda or 0.0
    on_policy = {}
    if lmbda > 0:  # the stated objective samples its own batches: so does continuing it
        on_policy = {"sampled": pr.sampled_rows(pr.student, ev.convention.sample_temperature or 1.0, 7)}
    out, steps, stopped_by = {}, ev.fit_steps, "steps"
    for lr in CONTINUE_LRS:
        tuned = pr.finetune(
            obj,
            steps=steps,
            budget_s=seconds,
            seed=1,
            lr=lr,
            eval_every=every,
            lmbda=lmbda,
            **on_policy,
        )
        if seconds is not None:  # the first run sets the steps of the others
            steps, seconds, stopped_by = tuned.steps, None, tuned.stopped_by
        out[f"{lr:g}"] = {
            "lr": lr,
            **pr.score(tuned.model, "val", obj),
            "curve": tuned.curve,
            "steps": tuned.steps,
            "stopped_by": stopped_by,
        }
    return out


def _sweep(ev: LMEvaluation, lr: float) -> tuple:
    """The alpha then T curves of per-token textbook objectives at one step size and step budget (the
    first run's, under a time budget); (alpha curve, T curve, budget)."""
    pr = ev.probes
    budget = {"steps": ev.sweep_steps, "seconds": ev.probe_budget and ev.probe_budget / 16}
    runs: dict = {}

    def point(a: float, T: float) -> dict:
        obj = token_objective(a, T)
        if obj not in runs:
            tuned = pr.finetune(obj, steps=budget["steps"], budget_s=budget["seconds"], seed=1, lr=lr)
            if budget["seconds"] is not None:  # the first run sets the steps of all the others
                budget.update(steps=tuned.steps, seconds=None, stopped_by=tuned.stopped_by)
            runs[obj] = pr.score(tuned.model, "val")
        return {"alpha": a, "temperature": T, **runs[obj]}

    alpha_curve = [point(a, ev.convention.temperature) for a in ALPHAS]
    best_alpha = max(alpha_curve, key=_rank)["alpha"]
    temp_curve = [point(best_alpha, T) for T in TEMPERATURES]
    return alpha_curve, temp_curve, budget


def _late_gain(curve: list) -> float:
    """Relative val-row KL drop over the second half of a continue run (its whole-curve reading)."""
    mid = curve[len(curve) // 2][2]
    return _rel(curve[-1][2], mid)


@register_check(
    "alpha_sensitivity",
    task="causal-lm",
    needs=("probe_rows",),
    title="Loss weighting sweep (tokens)",
    order=60,
)
def lm_alpha_sensitivity(
    ev: LMEvaluation,
    *,
    gain_warn: float = 0.08,
    gain_fail: float = 0.15,
    continue_warn: float = 0.05,
    continue_warn_div: float = 0.08,
) -> Finding:
    """Short fine-tuning runs of student copies: with the stated objective (does it still gain?) and
    with per-token textbook objectives over alpha and T (would another weighting gain more?).

    gain_*: val-row token agreement the best sweep point gains over the better of continuing with the
    stated objective and the checkpoint as it stands (high: the best of eight short runs is a biased
    maximum; no cause reads the sweep, only the continue gain); continue_warn(_div): the share by which
    continuing cuts the stated forward KL (another stated divergence) on val, from which the student had
    not converged (where the optimization cause's ramps end)."""
    pr, vocab = ev.probes, ev.vocab
    conv = ev.convention
    reads = "div" if reads_own_divergence(conv) else "kl"  # as the continue curve reads val
    start = pr.score(pr.student, "val", conv)
    continued = _continue(ev)
    base = max(continued.values(), key=_rank)
    alpha_curve, temp_curve, budget = _sweep(ev, base["lr"])
    best = max(alpha_curve + temp_curve, key=_rank)
    # a recommendation must beat both continuing with the stated objective and leaving the checkpoint be
    gain = best["agreement"] - max(base["agreement"], start["agreement"])
    share = kd_shares(ev)[2]
    moved = _rel(base[reads], start[reads])  # the stated divergence's continue gain on val
    late = _late_gain(base["curve"])
    evidence = {
        "checkpoint_val": start,
        "continue_val": base,
        "continue_runs": continued,  # val rows after continuing at each step size
        "continue_lr": base["lr"],
        "continue_gain_agreement": base["agreement"] - start["agreement"],
        # the stated divergence (forward KL(t||s) unless the user states reverse KL, JSD, ... or sampling)
        "continue_gain_kl_rel": moved,
        "continue_reads": {"kl": "KL(t||s)", "div": f"the stated {DIVERGENCE_NAMES[conv.divergence]}"}[reads],
        "continue_late_gain_kl_rel": late,
        "continue_first_half_share": _first_half_share(moved, late),
        "continue_steps": base["steps"],
        "continue_stopped_by": base["stopped_by"],
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
    # an objective that does not target the teacher's argmax is read in its own divergence only, under
    # its own key: a healthy reverse-KL or JSD student still moves its divergence more than a forward-KL
    # one moves KL (bytes zoo, unbiased rows: up to 2.9 % against 1.5 %), so the two ramps differ
    if reads == "div":
        evidence["continue_gain_agreement_unread"] = evidence.pop("continue_gain_agreement")
        evidence["continue_gain_div_rel"] = evidence.pop("continue_gain_kl_rel")
    details = {
        "alpha_curve": alpha_curve,
        "temperature_curve": temp_curve,
        "axis": "alpha (KD weight, per-token textbook objective)",
        "temperature_axis": "T",
    }
    cut = " (as many as the time budget allowed)" if evidence["sweep_stopped_by"] == "time" else ""
    swept = "" if conv.divergence == "forward_kl" else "forward-KL "  # the sweep's objective, not theirs
    point = f"alpha {best['alpha']:g} on KD, T {best['temperature']:g}"
    if conv.preset != "kd" and not swept and not PRESETS[conv.preset].fixed_weights:  # in their words too
        point += ": " + conv.to_user(best["alpha"], best["temperature"], vocab).setting()
    cut_continue = " (stopped by its time budget)" if base["stopped_by"] == "time" else ""
    words = (
        f"on {evidence['sweep_sequences']['train']} train sequences, scored on "
        f"{evidence['sweep_tokens']['val']:,} val tokens: continuing with the stated objective for "
        f"{base['steps']} steps{cut_continue} (Adam at {base['lr']:g}, the best of {len(continued)}) moves "
        f"token agreement {start['agreement']:.1%} -> {base['agreement']:.1%} and changes "
        f"{evidence['continue_reads']} on val by {-moved:+.1%} "
        f"({-late:+.1%} in its second half); after {budget['steps']} steps{cut} "
        + (
            f"the best per-token {swept}setting ({point}) reaches {best['agreement']:.1%} "
            f"({gain * 100:+.1f} points)"
            if gain >= SWEEP_NOISE
            else f"no per-token {swept}setting of the sweep beats that by a point (its best, {point}, "
            f"reaches {best['agreement']:.1%}, {gain * 100:+.1f} points: within the sweep's noise)"
        )
    )
    moving = moved >= (continue_warn_div if reads == "div" else continue_warn)
    if moving:
        words += f"; the stated objective still moves the student by {moved:.1%}: it had not converged"
    status = worst(
        grade(gain, gain_warn, gain_fail, what="the sweep's gain"), Status.WARN if moving else Status.PASS
    )
    return Finding("alpha_sensitivity", status, words, evidence, details)


def _first_half_share(moved: float, late: float) -> float:
    """The share of continuing's gain that came in its first half: near 1 when the second half gained
    nothing (a run that ended at a larger step size settling at a smaller one), near 1/2 for a run cut
    short that keeps going; 0 when there is no gain to read (under 0.5 %)."""
    if moved < 0.005:
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - late / moved)))


def _recommend(ev: LMEvaluation, best: dict, gain: float, gain_warn: float, vocab: int) -> dict | None:
    """The sweep's best setting in the user's words (with the KL per counted token); None when it does not
    beat continuing with the stated objective by more than gain_warn or is the stated setting."""
    if gain <= gain_warn:
        return None
    rec = ev.convention.to_user(best["alpha"], best["temperature"], vocab)
    if rec.same_setting(ev.convention) and ev.convention.reduction == "token" and not ev.convention.top_k:
        return None
    extra = "" if ev.convention.reduction == "token" else ", with the KL reduced per counted token"
    return rec.recommendation(best["alpha"], best["temperature"], extra)
