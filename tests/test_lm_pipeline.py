"""Failures LM trainers report, on pairs whose answer is known by construction: a student that learned
the token after next, a teacher that is the student, train rows that count no token."""

from __future__ import annotations

import torch
from torch import nn

from kddoctor import diagnose

V, L = 32, 24


class Counter(nn.Module):
    """A causal LM that knows the data's rule (each token is the previous plus one) and predicts the token
    `ahead` positions on: ahead 1 is a perfect next-token model, ahead 2 one trained on labels shifted
    once more than the model shifts them."""

    def __init__(self, ahead: int = 1) -> None:
        super().__init__()
        self.ahead = ahead
        self.scale = nn.Parameter(torch.tensor(6.0))

    def forward(self, input_ids, attention_mask=None):
        return self.scale * nn.functional.one_hot((input_ids + self.ahead) % V, V).float()


class Mixed(nn.Module):
    """A student whose loss mixed the right labels with labels shifted once more: it still bets most on
    the next token, but much of its mass sits on the token after next."""

    def __init__(self, next_scale: float = 6.0, after_scale: float = 5.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([next_scale, after_scale]))

    def forward(self, input_ids, attention_mask=None):
        one_hot = nn.functional.one_hot
        return (
            self.w[0] * one_hot((input_ids + 1) % V, V).float()
            + self.w[1] * one_hot((input_ids + 2) % V, V).float()
        )


def _batches(n: int = 8, empty_rows: int = 0, empty_batch: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(n):
        start = torch.randint(0, V, (8, 1), generator=g)
        ids = (start + torch.arange(L)) % V
        labels = ids.clone()
        labels[:empty_rows] = -100  # prompt-only rows: nothing counted
        if empty_batch and b == 0:
            labels[:] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def _diagnose(teacher, student, train=None, checks=None):
    data = train or _batches()
    return diagnose(
        teacher, student, data, _batches(), task="causal-lm", device="cpu", quick=True, checks=checks
    )


def test_a_student_that_learned_the_token_after_next_is_named():
    d = _diagnose(Counter(1), Counter(2), checks=["lm_alignment"])
    f = d.finding("lm_alignment")
    e = f.evidence
    assert (e["teacher_best_shift"], e["student_best_shift"]) == (1, 2)
    assert f.status.value == "fail" and "shifted once too often" in f.summary
    same = _diagnose(Counter(1), Counter(1), checks=["lm_alignment"]).finding("lm_alignment")
    assert same.status.value == "pass" and same.evidence["student_best_shift"] == 1


def test_a_teacher_that_is_the_student_is_said_first():
    model = Counter(1)
    d = _diagnose(model, model, checks=["model_identity", "generalization_gap"])
    assert d.finding("model_identity").status.value == "fail"
    assert d.verdict["kind"] == "identical_models" and "the teacher is the student" in d.verdict["sentence"]
    other = _diagnose(Counter(1), Counter(2), checks=["model_identity"])
    assert other.finding("model_identity").status.value == "pass"


def test_train_rows_and_batches_that_count_no_token_are_counted():
    d = _diagnose(
        Counter(1), Counter(1), train=_batches(empty_rows=2, empty_batch=True), checks=["lm_mask_parity"]
    )
    f = d.finding("lm_mask_parity")
    assert f.evidence["empty_batches"] == 1 and f.status.value == "fail"
    # batch 0 is all empty (8 rows), the other 7 batches have 2 empty rows each
    assert abs(f.evidence["empty_row_share"] - (8 + 7 * 2) / 64) < 1e-9
    assert "count no token" in f.summary


def test_a_student_that_partly_learned_the_token_after_next_is_named():
    """The student still fits the next token best (no shift excess), but predicts the token after next
    far better than token frequencies do; a next-token student, or one that learned nothing, does not."""
    f = _diagnose(Counter(1), Mixed(), checks=["lm_alignment"]).finding("lm_alignment")
    e = f.evidence
    assert (e["teacher_best_shift"], e["student_best_shift"], e["ahead_shift"]) == (1, 1, 2)
    assert e["ahead_gain_share"] > 0.5 and e["teacher_ahead_gain_share"] < 0
    assert f.status.value == "fail" and "taught the token after next" in f.summary
    for calm in (Counter(1), Mixed(6.0, 0.0), Mixed(0.0, 0.0)):
        g = _diagnose(Counter(1), calm, checks=["lm_alignment"]).finding("lm_alignment")
        assert g.status.value == "pass" and g.evidence["ahead_gain_share"] < 0.05, g.evidence
