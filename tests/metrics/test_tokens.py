"""Token-level LM metrics equal third-party references on the concatenated counted tokens, for any batch
split, chunk size and input dtype; merge() and a real 2-process gloo all_reduce equal one stream."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import textwrap
from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, log_loss

from kddoctor.metrics import functional
from kddoctor.metrics.functional import compute_pair_stats, pair_update
from kddoctor.metrics.tokens import IGNORE, N_BINS, TOP_BLOCK, TokenMetrics, top_ids

V = 41  # vocabulary
K = 5  # TokenMetrics' default top_k


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on shared, loaded cores torch's intra-op threads only wait on each other
    (a [3, 41] log_softmax took ms with 2 threads, us with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(seed: int, b: int = 24, length: int = 17, vocab: int = V):
    """Random [B, L, V] teacher/student logits and [B, L] labels with a prompt and padding of random
    length per row (-100), fp32."""
    g = torch.Generator().manual_seed(seed)
    t = 2.5 * torch.randn(b, length, vocab, generator=g)
    s = t + 1.5 * torch.randn(b, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (b, length), generator=g)
    for r in range(b):
        prompt = int(torch.randint(0, length // 2, (), generator=g))
        end = int(torch.randint(prompt + 1, length + 1, (), generator=g))
        labels[r, :prompt] = IGNORE
        labels[r, end:] = IGNORE
    labels[0] = IGNORE  # a row with nothing counted
    return t, s, labels


def _splits(t, s, labels, seed: int):
    """Random cuts along the batch; each part trimmed to its longest row, as a pad-to-longest collator
    does, so the parts have different lengths (and different max positions)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(labels)), size=rng.integers(2, 8), replace=False))
    parts = []
    for idx in np.split(np.arange(len(labels)), cuts):
        lab = labels[idx]
        kept = (lab != IGNORE).any(0).nonzero()
        n = int(kept.max()) + 1 if len(kept) else 1
        parts.append((t[idx, :n], s[idx, :n], lab[:, :n]))
    return parts


def _counted(batches):
    """The concatenated counted tokens, in numpy float64: rows of logits[:, :-1] where labels[:, 1:] is
    not -100 (position i predicts token i+1), their targets and positions."""
    rows_t, rows_s, ys, pos = [], [], [], []
    for t, s, labels in batches:
        target = labels[:, 1:].numpy()
        m = target != IGNORE
        rows_t.append(t[:, :-1].double().numpy()[m])
        rows_s.append(s[:, :-1].double().numpy()[m])
        ys.append(target[m])
        pos.append(np.nonzero(m)[1])
    return tuple(np.concatenate(v) for v in (rows_t, rows_s, ys, pos))


def numpy_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Independent reference: equal-width bins on the max probability, |acc - conf| (L1) weighted by
    bin size; the last bin is closed at 1."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for b in range(n_bins):
        hi_ok = conf < edges[b + 1] if b < n_bins - 1 else conf <= edges[b + 1]
        mask = (conf >= edges[b]) & hi_ok
        if mask.any():
            ece += mask.mean() * abs((pred[mask] == y[mask]).mean() - conf[mask].mean())
    return ece


def _topk_sets(row: np.ndarray, k: int) -> list[set]:
    """Every set of k ids a top-k may return: those strictly above the k-th value, plus any choice among
    the ids tied with it (ties are common in bf16, and topk's tie-break is unspecified)."""
    kth = np.sort(row)[::-1][k - 1]
    above, tied = set(np.flatnonzero(row > kth).tolist()), np.flatnonzero(row == kth).tolist()
    return [above | set(c) for c in combinations(tied, k - len(above))]


def _topk_overlap(t: np.ndarray, s: np.ndarray, k: int) -> tuple[float, float]:
    """Mean |top-k(t) & top-k(s)| / k with numpy sets, as (lowest, highest) over every tie-break: equal
    when no row has a tie at its k-th value."""
    lo = hi = 0
    for a, b in zip(t, s, strict=True):
        overlaps = [len(x & y) for x in _topk_sets(a, k) for y in _topk_sets(b, k)]
        lo, hi = lo + min(overlaps), hi + max(overlaps)
    return lo / (k * len(t)), hi / (k * len(t))


def reference(batches, k: int = K) -> dict:
    t, s, y, pos = _counted(batches)
    pt, ps = softmax(t, 1), softmax(s, 1)
    agree = pt.argmax(1) == ps.argmax(1)
    count = np.bincount(pos)
    by_pos = np.bincount(pos, weights=agree) / np.maximum(count, 1)
    out = {
        "tokens": len(y),
        "agreement": accuracy_score(pt.argmax(1), ps.argmax(1)),
        "top_k_overlap": _topk_overlap(t, s, k),
        "kl": float(rel_entr(pt, ps).sum(1).mean()),
        "agreement_by_position": [float(a) if c else None for a, c in zip(by_pos, count, strict=True)],
        # the per-token spread of student minus teacher NLL (numpy's population std)
        "nll_diff_sd": float(np.std(-np.log(ps[np.arange(len(y)), y]) + np.log(pt[np.arange(len(y)), y]))),
    }
    for name, p in (("teacher", pt), ("student", ps)):
        loss = log_loss(y, p, labels=range(t.shape[1]))
        out[name] = {
            "loss": loss,
            "perplexity": math.exp(loss),
            "acc": accuracy_score(y, p.argmax(1)),
            "ece": numpy_ece(p, y),
            "entropy": float(entropy(p, axis=1).mean()),
        }
    return out


def assert_close(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    assert got["tokens"] == want["tokens"]
    for key in ("agreement", "kl"):
        assert got[key] == pytest.approx(want[key], abs=tol), key
    lo, hi = (
        want["top_k_overlap"] if isinstance(want["top_k_overlap"], tuple) else [want["top_k_overlap"]] * 2
    )
    assert lo - tol <= got["top_k_overlap"] <= hi + tol, (got["top_k_overlap"], lo, hi)
    for name in ("teacher", "student"):
        assert set(got[name]) == set(want[name])
        for key, v in want[name].items():
            assert got[name][key] == pytest.approx(v, abs=tol, rel=tol), (name, key)
    assert len(got["agreement_by_position"]) == len(want["agreement_by_position"])
    for a, b in zip(got["agreement_by_position"], want["agreement_by_position"], strict=True):
        assert (a is None and b is None) or a == pytest.approx(b, abs=tol)


def _stream(batches, **kw) -> TokenMetrics:
    m = TokenMetrics(**kw)
    for b in batches:
        m.update(*b)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_elems", [V - 1, 3 * V, 2**22])  # one token per chunk, three, everything
@pytest.mark.parametrize("seed", range(2))
def test_streamed_metrics_equal_third_party_references(seed, chunk_elems, dtype):
    t, s, labels = _logits(seed)
    batches = [(a.to(dtype), b.to(dtype), y) for a, b, y in _splits(t, s, labels, seed)]
    m, want = _stream(batches, chunk_elems=chunk_elems), reference(batches)
    # the reference upcasts the very same (bf16) values, so the tolerance is fp32 arithmetic
    assert_close(m.compute(), want, tol=2e-5)
    if dtype == torch.float32:  # no ties: the top-k overlap is pinned exactly
        assert want["top_k_overlap"][0] == want["top_k_overlap"][1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [8 * TOP_BLOCK, 7 * TOP_BLOCK + 13])  # whole blocks only; a tail past them
def test_streamed_metrics_over_vocabularies_searched_by_blocks_equal_the_references(vocab, dtype):
    """Past K blocks of ids the top-k and the argmax come from block maxima (`top_ids`): the same
    references hold, ties in bf16 included."""
    t, s, labels = _logits(7, b=12, length=9, vocab=vocab)
    batches = [(a.to(dtype), b.to(dtype), y) for a, b, y in _splits(t, s, labels, 7)]
    assert_close(_stream(batches, chunk_elems=5 * vocab).compute(), reference(batches), tol=2e-5)


@pytest.mark.parametrize("vocab", [K * TOP_BLOCK, 6 * TOP_BLOCK, 9 * TOP_BLOCK + 7])
def test_top_ids_is_a_top_k_set_and_its_argmax_the_first_maximal_id(vocab):
    """Rows of few distinct values (ties everywhere: across blocks, inside one, in the tail): the k ids
    are one of the sets topk may return, the maximum is the row's, the argmax its lowest id."""
    g = torch.Generator().manual_seed(vocab)
    x = torch.randint(0, 6, (300, vocab), generator=g).float()
    x[:100] += torch.randn(100, vocab, generator=g)  # rows without ties
    x[200:, -1] = 9.0  # the maximum alone at the last id (in the tail where there is one)
    x[250:, 3] = 9.0  # ... and tied with an id in the first block
    top, best, first = top_ids(x, K)
    assert torch.equal(best, x.amax(-1)) and torch.equal(first, x.argmax(-1))
    # a top-k set: k distinct ids whose values are the row's k largest (which of the tied ids is free)
    assert all(len(set(ids)) == K for ids in top.tolist())
    assert torch.equal(x.gather(1, top).sort(-1, descending=True).values, x.topk(K, -1).values)


@pytest.mark.parametrize("seed", range(3))
def test_token_ece_is_the_image_ece_of_the_same_rows(seed):
    """The counted tokens seen as image samples ([N, V] rows, position i predicting label i+1): the
    image pair statistics bin and score them exactly as the token metrics do."""
    t, s, labels = _logits(10 + seed)
    batches = _splits(t, s, labels, seed)
    tokens = _stream(batches, chunk_elems=7 * V)
    rt, rs, y, _ = _counted(batches)
    stats, _ = pair_update(
        torch.tensor(rt, dtype=torch.float32), torch.tensor(rs, dtype=torch.float32), torch.tensor(y), V
    )
    image, got = compute_pair_stats(stats), tokens.compute()
    for m, name in (("t", "teacher"), ("s", "student")):
        assert torch.equal(tokens.bins[f"{m}_count"], stats[f"{m}_bin_count"]), m
        assert got[name]["ece"] == pytest.approx(image[name]["ece"], abs=1e-6)
        assert got[name]["acc"] == pytest.approx(image[name]["acc"], abs=1e-12)
        assert got[name]["loss"] == pytest.approx(image[name]["loss"], abs=1e-5)
    assert got["agreement"] == pytest.approx(image["agreement"], abs=1e-12)
    assert got["kl"] == pytest.approx(image["kl"], abs=1e-5)


def test_one_binning_shared_with_the_image_metrics():
    import kddoctor.metrics.tokens as tokens

    assert N_BINS == functional.N_BINS == 15
    assert tokens.bin_index is functional.bin_index is functional._bin_index
    conf = torch.tensor([0.0, 1 / 15 - 1e-9, 1 / 15 + 1e-9, 0.5, 14 / 15 + 1e-9, 1.0], dtype=torch.float64)
    assert functional.bin_index(conf).tolist() == [0, 0, 1, 7, 14, 14]


def test_merge_of_two_accumulators_equals_one_over_all_batches():
    t, s, labels = _logits(3)
    batches = _splits(t, s, labels, 3)
    whole = _stream(batches)
    merged = _stream(batches[::2]).merge(_stream(batches[1::2]))
    got, want = merged.compute(), whole.compute()
    assert_close(got, want, tol=1e-9)
    assert_close(got, reference(batches), tol=2e-5)


def test_on_chunk_sees_every_counted_token_in_bounded_fp32_chunks():
    t, s, labels = _logits(4)
    batches = [(a.bfloat16(), b.bfloat16(), y) for a, b, y in _splits(t, s, labels, 4)]
    seen = []

    def on_chunk(logp_t, logp_s):
        assert logp_t.dtype == logp_s.dtype == torch.float32
        assert logp_t.numel() <= 4 * V
        ones = torch.ones(len(logp_t))  # log-softmaxes (torch.testing would import sympy: seconds)
        assert torch.allclose(logp_t.exp().sum(-1), ones) and torch.allclose(logp_s.exp().sum(-1), ones)
        seen.append(len(logp_t))

    m = TokenMetrics(chunk_elems=4 * V)
    for b in batches:
        m.update(*b, on_chunk=on_chunk)
    assert sum(seen) == m.compute()["tokens"] == len(_counted(batches)[2])


def test_only_masked_labels_is_an_error_and_shapes_must_match():
    t, s, labels = _logits(0, b=2)
    m = TokenMetrics()
    m.update(t, s, torch.full_like(labels, IGNORE))
    with pytest.raises(ValueError, match="no counted tokens"):
        m.compute()
    with pytest.raises(ValueError, match="teacher logits"):
        m.update(t, s[..., :-1], labels)


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from kddoctor.metrics.tokens import TokenMetrics

    torch.set_num_threads(1)
    rank, port, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        m = TokenMetrics(chunk_elems=200)
        for batch in torch.load(data)[rank]:
            m.update(*batch)
        m.all_reduce()
        with open(out, "w") as f:
            json.dump(m.compute(), f)
    finally:
        dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_all_reduce_over_two_gloo_ranks_equals_one_stream(tmp_path):
    # rank 0 sees short sequences, rank 1 long ones: their position arrays differ in length
    per_rank = [_splits(*_logits(5, length=7), seed=5), _splits(*_logits(6, length=17), seed=6)]
    batches = per_rank[0] + per_rank[1]
    assert len(_stream(per_rank[0]).position["count"]) < len(_stream(per_rank[1]).position["count"])
    data = tmp_path / "batches.pt"
    torch.save(per_rank, data)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(r), port, str(data), str(tmp_path / f"rank{r}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        logs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    want = _stream(batches, chunk_elems=200).compute()  # the ranks' chunking: the same fp32 sums
    for r in range(2):
        assert_close(json.loads((tmp_path / f"rank{r}.json").read_text()), want, tol=1e-9)
