"""Streaming metrics equal independent references on the same logits, for any batch split."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss

from kddoctor.metrics import PairMetrics, compute_pair_stats, pair_update


def numpy_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """A plain reference ECE: equal-width bins on max probability, |acc - conf| weighted by bin size."""
    conf = probs.max(1)
    pred = probs.argmax(1)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for b in range(n_bins):
        hi_ok = conf < edges[b + 1] if b < n_bins - 1 else conf <= edges[b + 1]
        mask = (conf >= edges[b]) & hi_ok
        if mask.any():
            ece += mask.mean() * abs((pred[mask] == y[mask]).mean() - conf[mask].mean())
    return ece


def reference(t: np.ndarray, s: np.ndarray, y: np.ndarray, c: int) -> dict:
    pt, ps = softmax(t, 1), softmax(s, 1)
    kl = (pt * (np_log_softmax(t, 1) - np_log_softmax(s, 1))).sum(1).mean()
    return {
        "teacher": {
            "loss": log_loss(y, pt, labels=range(c)),
            "acc": accuracy_score(y, pt.argmax(1)),
            "ece": numpy_ece(pt, y),
        },
        "student": {
            "loss": log_loss(y, ps, labels=range(c)),
            "acc": accuracy_score(y, ps.argmax(1)),
            "ece": numpy_ece(ps, y),
        },
        "agreement": float((pt.argmax(1) == ps.argmax(1)).mean()),
        "kl": float(kl),
    }


def random_logits(seed: int, n: int = 1000, c: int = 7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    t = rng.normal(size=(n, c)) * 2 + np.eye(c)[y] * 3
    s = t + rng.normal(size=(n, c)) * 1.5
    return t, s, y


def assert_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    for k, v in want.items():
        if isinstance(v, dict):
            assert_close(got[k], v, tol)
        else:
            assert got[k] == pytest.approx(v, abs=tol), k


@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_references_on_random_splits(seed):
    t, s, y = random_logits(seed)
    rng = np.random.default_rng(100 + seed)
    cuts = np.sort(rng.choice(np.arange(1, len(y)), size=rng.integers(1, 30), replace=False))
    acc = PairMetrics(7)
    for ti, si, yi in zip(np.split(t, cuts), np.split(s, cuts), np.split(y, cuts), strict=True):
        acc.update(
            torch.tensor(ti, dtype=torch.float32), torch.tensor(si, dtype=torch.float32), torch.tensor(yi)
        )
    assert_close(acc.compute(), reference(t, s, y, 7))


def test_all_at_once_equals_streaming_and_merge():
    t, s, y = random_logits(9)
    tt = [torch.tensor(a, dtype=torch.float32) for a in (t, s)]
    yt = torch.tensor(y)
    whole, _ = pair_update(tt[0], tt[1], yt, 7)
    a, b = PairMetrics(7), PairMetrics(7)
    a.update(tt[0][:300], tt[1][:300], yt[:300])
    b.update(tt[0][300:], tt[1][300:], yt[300:])
    assert_close(a.merge(b).compute(), compute_pair_stats(whole), 1e-9)


def test_nonfinite_rows_are_excluded_and_counted():
    t, s, y = random_logits(3, n=200)
    t2 = t.copy()
    t2[5, 2] = np.nan
    s2 = s.copy()
    s2[7, 0] = np.inf
    m = PairMetrics(7)
    m.update(torch.tensor(t2, dtype=torch.float32), torch.tensor(s2, dtype=torch.float32), torch.tensor(y))
    keep = np.ones(200, bool)
    keep[[5, 7]] = False
    assert_close(m.compute(), reference(t[keep], s[keep], y[keep], 7))
    assert int(m.stats["nonfinite"]) == 2
    assert int(m.stats["n"]) == 198


def test_out_of_range_targets_are_counted_not_crashing():
    t, s, y = random_logits(4, n=50)
    y = y.copy()
    y[0] = 7
    y[1] = -1
    m = PairMetrics(7)
    m.update(torch.tensor(t, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), torch.tensor(y))
    assert int(m.stats["bad_target"]) == 2 and int(m.stats["n"]) == 48


def test_state_is_fixed_size():
    m = PairMetrics(10)
    sizes = {k: v.numel() for k, v in m.stats.items()}
    t, s, y = random_logits(1, n=5000, c=10)
    m.update(torch.tensor(t, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), torch.tensor(y))
    assert {k: v.numel() for k, v in m.stats.items()} == sizes
