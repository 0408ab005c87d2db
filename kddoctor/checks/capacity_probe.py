"""Can the student represent the teacher at all? Linear probes, a budgeted fit probe, size ratios."""

from __future__ import annotations

import math

import numpy as np

from ..convention import KDConvention
from ._probes import finetune, n_params
from .base import Finding, Status, grade, register_check, worst

FIT_TARGET = 0.99  # agreement a capable student reaches on a small train subset with pure KD
CLOSED_ENOUGH = 0.5  # covering half the way to the target within the budget: trainable, not too small


def linear_probe(
    feats_tr: np.ndarray, y_tr: np.ndarray, feats_va: np.ndarray, y_va: np.ndarray, seed: int
) -> float | None:
    """Logistic regression on standardized features, fitted on train, accuracy on val."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_tr)) < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100, C=1.0, random_state=seed))
    with warnings.catch_warnings():  # a bounded number of iterations is the point: fixed cost
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(feats_tr, y_tr)
    return float(clf.score(feats_va, y_va))


@register_check(
    "capacity_probe",
    needs=("features", "cache", "trainable"),
    title="Capacity probe",
    order=50,
    min_samples={"train": 32, "val": 20},
)
def capacity_probe(
    ev, *, fit_warn: float = FIT_TARGET, fit_fail: float = 0.95, probe_gap_warn: float = 0.10
) -> Finding:
    """Linear probes to the teacher's argmax, a pure-KD fit probe on a train subset, parameter ratio.

    fit_*: agreement the pure-KD fit probe must reach (FAIL only when it also covers less than half of
    the way there: a student that climbs fast is trainable, not too small); probe_gap_warn: teacher-
    feature minus student-feature linear-probe accuracy."""
    b = ev.config.budgets
    preds = {s: r.logits_subset["teacher"].argmax(1) for s, r in (("train", ev.train), ("val", ev.val))}
    probes = {
        m: linear_probe(
            ev.train.features[m], preds["train"], ev.val.features[m], preds["val"], ev.config.seed
        )
        for m in ("student", "teacher")
    }
    tuned = finetune(
        ev,
        KDConvention.pure_kd(temperature=1.0),
        steps=b.fit_steps,
        eval_every=max(1, b.fit_steps // 4),
        budget_s=ev.probe_budget,
        label="capacity fit",
    )
    curve = tuned.curve
    evidence = {**_fit(curve), **_sizes(ev), **tuned.evidence("fit")}
    gap = (probes["teacher"] - probes["student"]) if None not in probes.values() else 0.0
    evidence.update(
        fit_steps=b.fit_steps,
        fit_samples=len(ev.train.cache_x),
        fit_curve=curve,
        linear_probe_student=probes["student"],
        linear_probe_teacher=probes["teacher"],
        linear_probe_gap=gap,
    )
    fit, closed = evidence["fit_agreement"], evidence["fit_closed_fraction"]
    fit_status = grade(fit, fit_warn, fit_fail, higher_is_worse=False, what="the fit probe's agreement")
    if fit_status is Status.FAIL and closed >= CLOSED_ENOUGH:
        fit_status = Status.WARN
    status = worst(fit_status, grade(gap, probe_gap_warn, math.inf, what="the linear-probe gap"))
    return Finding("capacity_probe", status, _summary(ev, evidence, probes), evidence)


def _fit(curve: list) -> dict:
    """What the fit probe's curve says: where it started, where it got, how much of the way it covered."""
    fit = curve[-1][1] if curve else float("nan")
    start = curve[0][1] if curve else float("nan")
    # Still climbing at the end of the budget means "trainable, not yet trained", not "too small";
    # so does a big jump in the first steps from where the checkpoint stands (the whole curve counts).
    trained = curve[1:]
    rising = trained[-1][1] - trained[len(trained) // 2 - 1][1] if len(trained) >= 2 else 0.0
    # The share of the way from the checkpoint to the target that the probe covers: an under-trained
    # student covers most of it in a few dozen steps, one that is too small barely moves.
    room = FIT_TARGET - start
    closed = min(1.0, max(0.0, (fit - start) / room)) if room > 0.01 else 0.0
    return {
        "fit_agreement": fit,
        "fit_target": FIT_TARGET,
        "fit_rising": rising,
        "fit_start": start,
        "fit_jump": trained[0][1] - start if trained else 0.0,
        "fit_gain": fit - start,
        "fit_closed_fraction": closed,
        "fit_plateau_shortfall": max(0.0, FIT_TARGET - fit) * (1 - min(1.0, closed / CLOSED_ENOUGH)),
    }


def _sizes(ev) -> dict:
    params = {m: n_params(getattr(ev, m)) for m in ("student", "teacher")}
    widths = {m: ev.train.features[m].shape[1] for m in ("student", "teacher")}
    return {
        "student_params": params["student"],
        "teacher_params": params["teacher"],
        "param_ratio": params["student"] / max(params["teacher"], 1),
        "student_width": widths["student"],
        "teacher_width": widths["teacher"],
        "width_ratio": widths["student"] / max(widths["teacher"], 1),
    }


def _summary(ev, e: dict, probes: dict) -> str:
    fit, start = e["fit_agreement"], e["fit_start"]
    if fit >= FIT_TARGET:
        reach = "reaches"
    elif e["fit_closed_fraction"] >= CLOSED_ENOUGH:
        reach = "does not reach (but covers most of the way: trainable)"
    else:
        reach = "does not reach"
    n_tr, n_va = len(ev.train.features["student"]), len(ev.val.features["student"])
    return (
        f"fine-tuned with pure KD on {e['fit_samples']} train samples for {e['fit_steps_done']} steps"
        f"{' (stopped by its time budget)' if e['fit_stopped_by'] == 'time' else ''}, "
        f"the student {reach} {FIT_TARGET:.0%} agreement ({start:.1%} -> {fit:.1%}); linear probe to "
        f"the teacher's labels ({n_tr} train / {n_va} val features): student features "
        f"{probes['student'] or 0:.1%}, teacher features {probes['teacher'] or 0:.1%}; "
        f"{e['param_ratio']:.1%} of the teacher's parameters"
    )
