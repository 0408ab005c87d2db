"""A domain classifier (train vs val) on teacher features and on student features."""

from __future__ import annotations

import math

import numpy as np

from .base import Finding, Status, grade, register_check

MAX_ROWS = 800  # per split: bounded cost


def domain_auc(train: np.ndarray, val: np.ndarray, seed: int) -> float:
    """Cross-validated ROC AUC of a logistic regression telling train features from val features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    m = min(len(train), len(val), MAX_ROWS)
    if m < 10:
        return 0.5
    rng = np.random.default_rng(seed)
    a = train[rng.choice(len(train), m, replace=False)]
    b = val[rng.choice(len(val), m, replace=False)]
    x = np.concatenate([a, b])
    y = np.r_[np.ones(m), np.zeros(m)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=100))
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    # one BLAS thread: matrices this small lose to thread start-up, and a many-core host (or torch's own
    # threads beside) made the fit 10x slower than one thread does; the AUC is the same to the last bit
    with warnings.catch_warnings(), threadpool_limits(1):  # bounded iterations are the point: fixed cost
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(np.mean(cross_val_score(clf, x, y, cv=cv, scoring="roc_auc")))


def unshifted_words(
    aucs: dict, shift_warn: float, train: str = "train", val: str = "val", what: str = "the data"
) -> str:
    """A passing domain classifier in words: neither model separates the splits, or only one does
    (which no shift of the inputs themselves explains)."""
    if max(aucs.values()) < shift_warn:
        return f"neither model tells {train} from {val}"
    return f"only one model tells {train} from {val}: not a shift of {what} itself"


@register_check(
    "covariate_shift",
    needs=("features",),
    title="Covariate shift",
    order=70,
    min_samples={"train": 20, "val": 20},
)
def covariate_shift(
    ev, *, shift_warn: float = 0.60, shift_fail: float = 0.75, memo_warn: float = 0.10
) -> Finding:
    """Train-vs-val separability of each model's features: both -> data shift; student -> memorization.

    shift_*: domain AUC on both models' features; memo_warn: student AUC beyond the teacher's."""
    aucs = {
        m: domain_auc(ev.train.features[m], ev.val.features[m], ev.config.seed)
        for m in ("teacher", "student")
    }
    excess = aucs["student"] - aucs["teacher"]
    both = min(aucs.values())
    evidence = {
        "auc_teacher": aucs["teacher"],
        "auc_student": aucs["student"],
        "auc_excess": excess,
        "auc_both": both,
        "rows_per_split": min(len(ev.train.features["student"]), len(ev.val.features["student"]), MAX_ROWS),
    }
    evidence["train_augmented"] = float(ev.train_augmented)
    evidence["train_source"] = ev.train_source
    shift = grade(both, shift_warn, shift_fail, what="the domain classifier's AUC")
    if ev.train_augmented and shift is not Status.PASS:
        status, why = (
            Status.PASS,
            "expected: the train side is augmented (give a train_eval loader to compare)",
        )
    elif shift is Status.FAIL:
        status, why = Status.FAIL, "both models separate train from val: the data itself shifted"
    elif shift is Status.WARN:
        status, why = Status.WARN, "both models separate train from val somewhat: a mild data shift"
    elif grade(excess, memo_warn, math.inf, what="the student's excess domain AUC") is Status.WARN:
        status, why = Status.WARN, "only the student separates them: it memorized its training samples"
    else:
        status, why = Status.PASS, unshifted_words(aucs, shift_warn)
    summary = (
        f"domain classifier AUC ({evidence['rows_per_split']} samples per split) on teacher features "
        f"{aucs['teacher']:.2f}, on student features {aucs['student']:.2f}: {why}"
    )
    return Finding("covariate_shift", status, summary, evidence)
