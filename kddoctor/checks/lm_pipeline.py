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
def _nll_by_shift(pr, model, split: str, unigram: torch.Tensor | None = None) -> dict[int, float]:
    """A model's NLL per counted token of a split's probe rows, its logits at position i scored against
    the label at i + shift, for each shift (the same tokens for every shift). `model` None scores the
    `unigram` log-probabilities instead: what token frequencies alone predict at those tokens."""
    ids, mask, labels = pr.rows[split]
    sums = {k: 0.0 for k in SHIFTS}
    n = 0.0
    for i in range(0, len(ids), 8):
        rows = slice(i, i + 8)
        lab = labels[rows]
        if model is None:
            logp = None
        else:  # [b, L-1, V]: positions 0..L-2
            logp = F.log_softmax(pr._logits(model, ids[rows], mask[rows]), -1)
        width = lab.shape[1] - max(SHIFTS)
        counted = torch.stack([lab[:, s : s + width] != IGNORE for s in SHIFTS]).all(0)
        n += float(counted.sum())
        for s in SHIFTS:
            target = lab[:, s : s + width].clamp_min(0)
            if logp is None:
                picked = unigram[target.clamp_max(len(unigram) - 1)]
            else:
                picked = logp[:, :width].gather(-1, target[..., None])[..., 0]
            sums[s] += float(-torch.where(counted, picked, 0.0).sum())  # an uncounted -inf is no NaN
    return {s: v / max(n, 1.0) for s, v in sums.items()}


def _ahead_gain_share(nll: dict, uni: dict, ref: int) -> tuple[float | None, float | None]:
    """(student, teacher): the gain over token frequencies of each model's logits at i scored against
    the label one past the teacher's (i + ref + 1), as a share of the teacher's own gain at i + ref.
    A next-token model gains nothing there, or loses (it bets on the next token, not the one after);
    a student part of whose loss taught the token after next gains there while it still fits i + ref
    best. None when the teacher has no gain to compare with, or no shift lies past its own."""
    ahead = ref + 1
    base = uni[ref] - nll["teacher"][ref]
    if ahead not in uni or base <= 1e-6:
        return None, None
    return tuple((uni[ahead] - nll[m][ahead]) / base for m in ("student", "teacher"))


@register_check("lm_alignment", task="causal-lm", needs=("probe_rows",), title="Label alignment", order=16)
def lm_alignment(
    ev: LMEvaluation,
    *,
    shift_excess_warn: float = 0.25,
    shift_excess_fail: float = 1.0,
    ahead_share_warn: float = 0.15,
    ahead_share_fail: float = 0.25,
) -> Finding:
    """Which position does each model predict? Each one's NLL on the val rows with its logits at i scored
    against the label at i, i + 1 (the Hugging Face shift) and i + 2: a student trained on labels
    shifted once too often (or not at all) fits another shift than its teacher does. A student trained
    on a mix (a CE term on shifted labels beside a KD term on the right ones) still fits i + 1 best but
    also predicts i + 2 far better than token frequencies do, which no next-token model does.

    shift_excess_*: nats/token by which another shift fits the student better than the teacher's (a
    student far smaller than its teacher fits the token it reads a little better than the next one: 0.14
    nats at 1/20 of a Llama teacher; one trained on shifted labels fits its shift by nats).
    ahead_share_*: the student's gain over token frequencies at the label after the teacher's, as a
    share of the teacher's gain at its own (the LM zoo's tuning draw: at most 0.13 without shifted
    labels, from a near-unigram student; 0.4 with a CE term weighted 0.8 on labels shifted once more)."""
    from ..lm.evaluation import unigram_log_probs

    pr = ev.probes
    nll = {m: _nll_by_shift(pr, getattr(pr, m), "val") for m in ("teacher", "student")}
    unigram = torch.as_tensor(unigram_log_probs(ev), dtype=torch.float32, device=pr.rows["val"][2].device)
    uni = _nll_by_shift(pr, None, "val", unigram)
    best = {m: min(SHIFTS, key=lambda s, m=m: nll[m][s]) for m in nll}
    ref = best["teacher"]
    other = min((nll["student"][s] for s in SHIFTS if s != ref), default=float("inf"))
    excess = nll["student"][ref] - other  # > 0: another shift fits the student better
    ahead, teacher_ahead = _ahead_gain_share(nll, uni, ref)
    evidence = {
        "teacher_nll_by_shift": nll["teacher"],
        "student_nll_by_shift": nll["student"],
        "unigram_nll_by_shift": uni,
        "teacher_best_shift": ref,
        "student_best_shift": best["student"],
        "shift_excess": excess,
        "ahead_shift": ref + 1,
        "ahead_gain_share": ahead,
        "teacher_ahead_gain_share": teacher_ahead,
    }
    status = grade(excess, shift_excess_warn, shift_excess_fail, what="the shift excess")
    mixed = (
        grade(ahead, ahead_share_warn, ahead_share_fail, what="the gain share past the teacher's shift")
        if ahead is not None and best["student"] == ref
        else Status.PASS
    )
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
    elif mixed is not Status.PASS:
        status = mixed
        words += (
            f"; at i+{ref + 1} it beats token frequencies by {ahead:.0%} of its teacher's gain at i+{ref}, "
            f"where a next-token model gains nothing (its teacher: {teacher_ahead:+.0%}): part of its "
            "training loss taught the token after next"
        )
    return Finding("lm_alignment", status, words, evidence)


@register_check(
    "mode_parity",
    task="causal-lm",
    needs=("probe_rows", "teacher_module"),
    title="Teacher train/eval mode parity",
    order=18,
)
def lm_mode_parity(ev: LMEvaluation, *, disagreement_warn: float = 0.05) -> Finding:
    """How far a teacher left in train mode (dropout on: a wrapper module whose .train() reaches the
    teacher too) strays from its eval-mode targets on the val rows, and which of the two the student sits
    closer to. A teacher without dropout gives the same targets either way; one with it gave a student
    distilled in that loop noisier, smoother targets (an exposure, as the image check reports it: the
    checkpoint cannot say which loop it came from).

    disagreement_warn: share of val tokens whose argmax the train-mode teacher changes."""
    drift = ev.probes.teacher_mode_drift("val")
    evidence = dict(drift)
    evidence["student_closer_to_train_mode"] = (
        drift["student_kl_to_eval_teacher"] - drift["student_kl_to_train_teacher"]
    )
    if abs(drift["teacher_train_mode_kl"]) <= 1e-6:  # the same outputs, to float error
        words = (
            f"the teacher in train mode gives its eval-mode outputs on {drift['tokens']:,} val tokens (no "
            "dropout): a loop that left it in train mode changed nothing"
        )
        return Finding("mode_parity", Status.PASS, words, evidence)
    disagree = drift["teacher_train_mode_disagreement"]
    status = grade(disagree, disagreement_warn, float("inf"), what="the train-mode disagreement")
    words = (
        f"a teacher left in train mode (dropout on) changes its top token on {disagree:.1%} of "
        f"{drift['tokens']:,} val tokens (KL {drift['teacher_train_mode_kl']:.3f} nats/token from its "
        f"eval-mode self); the student's KL is {drift['student_kl_to_eval_teacher']:.3f} to the eval-mode "
        f"teacher and {drift['student_kl_to_train_teacher']:.3f} to the train-mode one: keep the teacher "
        "in eval mode inside the KD loop"
    )
    return Finding("mode_parity", status, words, evidence)
