"""Can the student represent the teacher at all? Linear probes, a budgeted fit probe, size ratios."""

from __future__ import annotations

import numpy as np

from ..convention import KDConvention
from ._probes import finetune, n_params
from .base import Finding, Status, register_check, worst

FIT_TARGET = 0.99  # agreement a capable student reaches on a small train subset with pure KD
FIT_FAIL = 0.95
PROBE_GAP_WARN = 0.10  # teacher-feature probe accuracy minus student-feature probe accuracy
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
def capacity_probe(ev) -> Finding:
    """Linear probes to the teacher's argmax, a pure-KD fit probe on a train subset, parameter ratio."""
    b = ev.config.budgets
    preds = {s: r.logits_subset["teacher"].argmax(1) for s, r in (("train", ev.train), ("val", ev.val))}
    probes = {
        m: linear_probe(
            ev.train.features[m], preds["train"], ev.val.features[m], preds["val"], ev.config.seed
        )
        for m in ("student", "teacher")
    }
    model, curve = finetune(
        ev, KDConvention.pure_kd(temperature=1.0), steps=b.fit_steps, eval_every=max(1, b.fit_steps // 4)
    )
    del model
    fit = curve[-1][1] if curve else float("nan")
    start = curve[0][1] if curve else float("nan")
    # Still climbing at the end of the budget means "trainable, not yet trained", not "too small";
    # so does a big jump in the first steps from where the checkpoint stands (the whole curve counts).
    trained = curve[1:]
    rising = trained[-1][1] - trained[len(trained) // 2 - 1][1] if len(trained) >= 2 else 0.0
    jump = trained[0][1] - start if trained else 0.0
    # The share of the way from the checkpoint to the target that the probe covers: an under-trained
    # student covers most of it in a few dozen steps, one that is too small barely moves.
    room = FIT_TARGET - start
    closed = min(1.0, max(0.0, (fit - start) / room)) if room > 0.01 else 0.0
    plateau_shortfall = max(0.0, FIT_TARGET - fit) * (1 - min(1.0, closed / CLOSED_ENOUGH))
    params = {m: n_params(getattr(ev, m)) for m in ("student", "teacher")}
    widths = {m: ev.train.features[m].shape[1] for m in ("student", "teacher")}
    gap = (probes["teacher"] - probes["student"]) if None not in probes.values() else 0.0
    evidence = {
        "fit_agreement": fit,
        "fit_target": FIT_TARGET,
        "fit_rising": rising,
        "fit_start": start,
        "fit_jump": jump,
        "fit_gain": fit - start,
        "fit_closed_fraction": closed,
        "fit_plateau_shortfall": plateau_shortfall,
        "fit_steps": b.fit_steps,
        "fit_samples": len(ev.train.cache_x),
        "fit_curve": curve,
        "linear_probe_student": probes["student"],
        "linear_probe_teacher": probes["teacher"],
        "linear_probe_gap": gap,
        "student_params": params["student"],
        "teacher_params": params["teacher"],
        "param_ratio": params["student"] / max(params["teacher"], 1),
        "student_width": widths["student"],
        "teacher_width": widths["teacher"],
        "width_ratio": widths["student"] / max(widths["teacher"], 1),
    }
    status = worst(
        Status.FAIL
        if fit < FIT_FAIL and closed < CLOSED_ENOUGH
        else Status.WARN
        if fit < FIT_TARGET
        else Status.PASS,
        Status.WARN if gap > PROBE_GAP_WARN else Status.PASS,
    )
    reach = (
        "reaches"
        if fit >= FIT_TARGET
        else "does not reach (but covers most of the way: trainable)"
        if closed >= CLOSED_ENOUGH
        else "does not reach"
    )
    summary = (
        f"fine-tuned with pure KD on {len(ev.train.cache_x)} train samples for {b.fit_steps} steps, "
        f"the student {reach} {FIT_TARGET:.0%} agreement ({start:.1%} -> {fit:.1%}); linear probe to "
        f"the teacher's labels: student features {probes['student'] or 0:.1%}, teacher features "
        f"{probes['teacher'] or 0:.1%}; {evidence['param_ratio']:.1%} of the teacher's parameters"
    )
    return Finding("capacity_probe", status, summary, evidence)
