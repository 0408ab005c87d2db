"""A failure LM trainers report that the pair shows: labels shifted once too often (or not at all), so
the student learned to predict another position than its teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lm.evaluation import LMEvaluation
from ..metrics.tokens import IGNORE
from .base import Finding, Status, grade, register_check

SHIFTS = (0, 1, 2)  # position i scored against label i + shift; Hugging Face causal LMs use 1


@torch.no_grad()
def _nll_by_shift(pr, model, split: str) -> dict[int, float]:
    """A model's NLL per counted token of a split's probe rows, its logits at position i scored against
    the label at i + shift, for each shift (the same tokens for every shift)."""
    ids, mask, labels = pr.rows[split]
    sums = {k: 0.0 for k in SHIFTS}
    n = 0.0
    for i in range(0, len(ids), 8):
        rows = slice(i, i + 8)
        logp = F.log_softmax(pr._logits(model, ids[rows], mask[rows]), -1)  # [b, L-1, V]: positions 0..L-2
        lab = labels[rows]
        width = lab.shape[1] - max(SHIFTS)
        counted = torch.stack([lab[:, s : s + width] != IGNORE for s in SHIFTS]).all(0)
        n += float(counted.sum())
        for s in SHIFTS:
            target = lab[:, s : s + width].clamp_min(0)[..., None]
            picked = logp[:, :width].gather(-1, target)[..., 0]
            sums[s] += float(-torch.where(counted, picked, 0.0).sum())  # an uncounted -inf is no NaN
    return {s: v / max(n, 1.0) for s, v in sums.items()}


@register_check("lm_alignment", task="causal-lm", needs=("probe_rows",), title="Label alignment", order=16)
def lm_alignment(
    ev: LMEvaluation, *, shift_excess_warn: float = 0.25, shift_excess_fail: float = 1.0
) -> Finding:
    """Which position does each model predict? Each one's NLL on the val rows with its logits at i scored
    against the label at i, i + 1 (the Hugging Face shift) and i + 2: a student trained on labels
    shifted once too often (or not at all) fits another shift than its teacher does.

    shift_excess_*: nats/token by which another shift fits the student better than the teacher's (a
    student far smaller than its teacher fits the token it reads a little better than the next one: 0.14
    nats at 1/20 of a Llama teacher; one trained on shifted labels fits its shift by nats)."""
    pr = ev.probes
    nll = {m: _nll_by_shift(pr, getattr(pr, m), "val") for m in ("teacher", "student")}
    best = {m: min(SHIFTS, key=lambda s, m=m: nll[m][s]) for m in nll}
    ref = best["teacher"]
    other = min((nll["student"][s] for s in SHIFTS if s != ref), default=float("inf"))
    excess = nll["student"][ref] - other  # > 0: another shift fits the student better
    evidence = {
        "teacher_nll_by_shift": nll["teacher"],
        "student_nll_by_shift": nll["student"],
        "teacher_best_shift": ref,
        "student_best_shift": best["student"],
        "shift_excess": excess,
    }
    status = grade(excess, shift_excess_warn, shift_excess_fail, what="the shift excess")
    say = {s: f"{nll['student'][s]:.2f}" for s in SHIFTS}
    words = (
        f"the student's NLL with its logits at position i scored against the label at i+0, i+1, i+2: "
        f"{say[0]}, {say[1]}, {say[2]} nats/token (the teacher fits i+{ref})"
    )
    if best["student"] != ref and status is not Status.PASS:
        words += (
            f": the student learned to predict the token at i+{best['student']}, its teacher the one at "
            f"i+{ref}: its training labels were shifted "
            f"{'once too often' if best['student'] > ref else 'too little'}"
        )
    return Finding("lm_alignment", status, words, evidence)
