"""Token-level LM metrics: a streamed, chunked computation equals the naive full-tensor one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kddoctor.metrics.tokens import IGNORE, TokenMetrics


def _batch(seed: int, b: int = 3, length: int = 9, vocab: int = 37, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = (2 * torch.randn(b, length, vocab, generator=g)).to(dtype)
    s = (t.float() + torch.randn(b, length, vocab, generator=g)).to(dtype)
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, :4] = IGNORE  # a prompt
    labels[1, -3:] = IGNORE  # padding
    return t, s, labels


def _naive(batches) -> dict:
    rows_t, rows_s, ys, pos = [], [], [], []
    for t, s, labels in batches:
        target = labels[:, 1:]
        m = target != IGNORE
        rows_t.append(t[:, :-1][m].double())
        rows_s.append(s[:, :-1][m].double())
        ys.append(target[m])
        pos.append(torch.nonzero(m)[:, 1])
    t, s, y, pos = (torch.cat(v) for v in (rows_t, rows_s, ys, pos))
    lt, ls = F.log_softmax(t, -1), F.log_softmax(s, -1)
    agree = t.argmax(-1) == s.argmax(-1)
    conf_s = ls.exp().max(-1).values
    ok_s = s.argmax(-1) == y
    bins = torch.clamp((conf_s * 15).long(), max=14)
    ece = sum(abs(conf_s[bins == i].sum() - ok_s[bins == i].double().sum()) for i in range(15)) / len(y)
    by_pos = [
        float(agree[pos == p].double().mean()) if (pos == p).any() else None
        for p in range(int(pos.max()) + 1)
    ]
    top_t, top_s = t.topk(5, -1).indices, s.topk(5, -1).indices
    return {
        "tokens": len(y),
        "agreement": float(agree.double().mean()),
        "kl": float((lt.exp() * (lt - ls)).sum(-1).mean()),
        "top_k_overlap": float((top_t[:, :, None] == top_s[:, None, :]).any(-1).double().sum(-1).mean() / 5),
        "student_loss": float(-ls.gather(1, y[:, None]).mean()),
        "teacher_acc": float((t.argmax(-1) == y).double().mean()),
        "student_entropy": float(-(ls.exp() * ls).sum(-1).mean()),
        "student_ece": float(ece),
        "agreement_by_position": by_pos,
    }


def _check(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert got["tokens"] == want["tokens"]
    for key in ("agreement", "kl", "top_k_overlap"):
        assert got[key] == pytest.approx(want[key], abs=tol), key
    assert got["student"]["loss"] == pytest.approx(want["student_loss"], abs=tol)
    assert got["teacher"]["acc"] == pytest.approx(want["teacher_acc"], abs=tol)
    assert got["student"]["entropy"] == pytest.approx(want["student_entropy"], abs=tol)
    assert got["student"]["ece"] == pytest.approx(want["student_ece"], abs=tol)
    assert got["student"]["perplexity"] == pytest.approx(math.exp(want["student_loss"]), rel=tol)
    for a, b in zip(got["agreement_by_position"], want["agreement_by_position"], strict=True):
        assert (a is None and b is None) or a == pytest.approx(b, abs=tol)


@pytest.mark.parametrize("chunk_elems", [37, 37 * 5, 2**22])  # one token per chunk, five, everything
def test_streamed_chunked_metrics_equal_the_naive_computation(chunk_elems):
    batches = [_batch(seed) for seed in range(3)]
    m = TokenMetrics(chunk_elems=chunk_elems)
    for b in batches:
        m.update(*b)
    _check(m.compute(), _naive(batches))


def test_bf16_logits_are_scored_in_fp32():
    batches = [_batch(seed, dtype=torch.bfloat16) for seed in range(2)]
    m = TokenMetrics(chunk_elems=100)
    for b in batches:
        m.update(*b)
    _check(m.compute(), _naive(batches))  # the reference upcasts the same bf16 values


def test_merge_of_parts_equals_one_stream():
    batches = [_batch(seed, length=5 + 3 * seed) for seed in range(4)]  # different lengths
    whole, a, b = TokenMetrics(), TokenMetrics(), TokenMetrics()
    for i, batch in enumerate(batches):
        whole.update(*batch)
        (a if i % 2 else b).update(*batch)
    _check(a.merge(b).compute(), _naive(batches))
    assert whole.compute()["agreement_by_position"] == a.compute()["agreement_by_position"]


def test_only_masked_labels_is_an_error_and_shapes_must_match():
    t, s, labels = _batch(0)
    m = TokenMetrics()
    m.update(t, s, torch.full_like(labels, IGNORE))
    with pytest.raises(ValueError, match="no counted tokens"):
        m.compute()
    with pytest.raises(ValueError, match="teacher logits"):
        m.update(t, s[..., :-1], labels)
