"""`--teacher topk:DIR`: DistillKit's own offline capture (parquet rows of input_ids and the teacher's top-k
log-probabilities for positions 1..L-1), read in its raw and compressed layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_lm_engine import _capture, _lm_cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _rows(npz):
    """DistillKit's per-row view of one of our captures: the real tokens, and the log-probabilities of
    positions 0..L-2 (vLLM's prompt log-probabilities of tokens 1..L-1)."""
    z = np.load(npz)
    arrays = (z["input_ids"], z["attention_mask"], z["top_ids"], z["top_logprobs"])
    for ids, mask, top, logp in zip(*arrays, strict=True):
        n = int(mask.sum())
        yield ids[:n].tolist(), top[: n - 1], logp[: n - 1]


def _live_metrics(tmp_path):
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache")
    assert res.exit_code == 0, res.stderr
    return json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]


def _assert_teacher_matches(tmp_path, spec, live, rel):
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", spec)
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    for split in ("train", "val"):
        for key in ("loss", "acc"):
            want = live[split]["teacher"][key]
            assert doc["metrics"][split]["teacher"][key] == pytest.approx(want, rel=rel, abs=1e-6)
        assert doc["metrics"][split]["kl"] == pytest.approx(live[split]["kl"], rel=rel)
    return doc


def test_a_raw_distillkit_parquet_capture_stands_in_for_the_teacher(tmp_path):
    """Raw columns, two extra slots per position padded as DistillKit pads them (-inf, an arbitrary id,
    here beyond the vocabulary): with every id captured the metrics are the live teacher's."""
    live = _live_metrics(tmp_path)
    cap = tmp_path / "capture"
    cap.mkdir()
    rows = list(_rows(_capture(tmp_path, k=23)))
    pad = lambda a, v: np.concatenate([a, np.full((len(a), 2), v, a.dtype)], -1).tolist()  # noqa: E731
    table = pa.table(
        {
            "input_ids": [ids for ids, _, _ in rows],
            "token_ids": [pad(top, 10**6) for _, top, _ in rows],
            "top_values": [pad(logp, -np.inf) for _, _, logp in rows],
        }
    )
    half = len(rows) // 2  # two files, as DistillKit's writer rolls them
    pq.write_table(table.slice(0, half), cap / "data_0.parquet")
    pq.write_table(table.slice(half), cap / "data_1.parquet")
    doc = _assert_teacher_matches(tmp_path, f"topk:{cap}", live, rel=1e-4)
    # the last token of each row has no captured log-probabilities: uniform there, never -inf
    align = next(c for c in doc["checks"] if c["id"] == "lm_alignment")
    assert all(v is not None for v in align["evidence"]["teacher_nll_by_shift"].values())


def _compressed_dir(tmp_path, codec=None, config=None):
    """A capture in DistillKit's compressed layout (with its own codec when given, else stand-in bytes)."""
    cap = tmp_path / "compressed"
    cap.mkdir(exist_ok=True)
    cols = {"input_ids": [], "compressed_logprobs": [], "bytepacked_indices": []}
    for ids, top, logp in _rows(_capture(tmp_path, k=23)):
        if codec is not None:
            import torch

            out = codec.compress_from_sparse(torch.from_numpy(top)[None], torch.from_numpy(logp)[None])
            cols["compressed_logprobs"].append(out["compressed_logprobs"][0].tolist())
            cols["bytepacked_indices"].append(out["bytepacked_indices"][0].tolist())
        else:
            cols["compressed_logprobs"].append([[0] * 8] * len(top))
            cols["bytepacked_indices"].append([[0] * 8] * len(top))
        cols["input_ids"].append(ids)
    pq.write_table(pa.table(cols), cap / "data_0.parquet")
    if config is not None:
        import yaml

        (cap / "compression_config.yaml").write_text(yaml.safe_dump(config))
    return cap


def test_a_compressed_capture_without_its_config_or_codec_is_one_line_and_exit_2(tmp_path):
    cap = _compressed_dir(tmp_path)
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{cap}")
    assert res.exit_code == 2 and "no compression_config.yaml" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    try:
        import distillkit.compression  # noqa: F401
    except ImportError:
        (cap / "compression_config.yaml").write_text("d: 23\nk: 23\nexact_k: 23\n")
        res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{cap}")
        assert res.exit_code == 2 and "needs the distillkit package" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{empty}")
    assert res.exit_code == 2 and "no .parquet capture there" in res.stderr


def test_a_compressed_distillkit_capture_decodes_with_its_own_codec(tmp_path):
    """DistillKit's default layout, compressed and decoded by DistillKit itself (runs where the package
    is installed): every id kept exactly, so the metrics are the live teacher's to the codec's float32."""
    dk = pytest.importorskip("distillkit.compression")
    live = _live_metrics(tmp_path)
    cfg = dk.DistributionQuantizationConfig(
        d=23, k=23, exact_k=23, exact_dtype="float32", polynomial_terms=[0], residual_bins=[]
    )
    cap = _compressed_dir(tmp_path, dk.LogprobCompressor(config=cfg), cfg.model_dump(mode="json"))
    _assert_teacher_matches(tmp_path, f"topk:{cap}", live, rel=1e-4)


def test_a_top_k_capture_skips_what_needs_the_whole_distribution_and_refuses_a_larger_k(tmp_path):
    """A capture of the top 5 of 23 ids: without a stated top-k the checks that need the teacher's whole
    distribution (the KD term's precision, the objective fingerprint) say why they are skipped; with the
    top 5 stated they run; a stated top-k above 5 cannot be read from it (one line, exit 2)."""
    npz = _capture(tmp_path, k=5)
    for stated, want in (((), "skipped"), (("--teacher-top-k", "5"), None)):
        res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{npz}", *stated)
        assert res.exit_code == 0, res.stderr
        doc = json.loads((tmp_path / "out" / "results.json").read_text())
        checks = {c["id"]: c for c in doc["checks"]}
        for cid in ("lm_precision", "objective_fingerprint"):
            assert (checks[cid]["status"] == "skipped") == (want == "skipped"), checks[cid]
        if want:
            assert "offline top-5 capture" in checks["lm_precision"]["summary"]
            assert any("offline top-5 capture of 23 ids" in n for n in doc["notes"])
        align = checks["lm_alignment"]
        assert all(v is not None for v in align["evidence"]["teacher_nll_by_shift"].values())
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--teacher", f"topk:{npz}", "--teacher-top-k", "8")
    assert res.exit_code == 2 and "holds only the top 5 ids" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # TRL's server path: its top-1 support holds the text's token, and its tail at T 2 the teacher's mass
    # outside its top k at T 2, neither of which a capture at T 1 holds
    server = ("--task", "causal-lm", "--teacher", f"topk:{npz}", "--preset", "trl-server-distill")
    for extra, want in (
        ((), "reads the teacher's log-probability of every text token"),
        (("--beta", "0", "--teacher-top-k", "4", "--temperature", "2"), "a capture at T 1 cannot give"),
    ):
        res = _lm_cli(tmp_path, *server, *extra)
        assert res.exit_code == 2 and want in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_a_capture_whose_vocabulary_is_below_its_own_token_ids_is_refused(tmp_path):
    """DistillKit packs ids in ceil(log2 d) bits: a capture made with d below the tokenizer's vocabulary
    lost its high ids; its rows' own tokens show it (one line naming d, exit 2)."""
    z = dict(np.load(_capture(tmp_path, k=5)))
    z["top_ids"] = z["top_ids"] % 16
    z["vocab_size"] = np.asarray(16)
    bad = tmp_path / "small_d.npz"
    np.savez(bad, **z)
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--teacher", f"topk:{bad}")
    assert res.exit_code == 2 and "the capture's vocabulary is 16" in res.stderr
    assert "recapture with d (vocab_size) at least" in res.stderr


def test_a_position_without_captured_log_probabilities_reads_as_uniform(tmp_path):
    """DistillKit captures positions 0..L-2 of a row: at the last token (and in padding) the teacher is
    uniform, never -inf (which a masked sum turns into NaN), and a slot past the k captured is ignored."""
    import torch

    from kddoctor.lm.offline import OfflineTeacher

    cap = tmp_path / "capture"
    cap.mkdir()
    top = [[[3, 1, 10**6]], [[2, 0, 10**6], [4, 2, 10**6]]]  # k 3, the third slot padded (-inf)
    logp = [[[-0.2, -2.0, -np.inf]], [[-0.1, -3.0, -np.inf], [-0.5, -1.0, -np.inf]]]
    pq.write_table(
        pa.table({"input_ids": [[5, 6], [7, 8, 9]], "token_ids": top, "top_values": logp}), cap / "a.parquet"
    )
    teacher = OfflineTeacher(cap, vocab=12)
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    out = torch.log_softmax(teacher(ids, torch.tensor([[1, 1, 0], [1, 1, 1]])), -1)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 1], torch.full((12,), -np.log(12.0)))  # the last token: uniform
    assert torch.allclose(out[1, 2], torch.full((12,), -np.log(12.0)))
    assert out[1, 1, 4].item() == pytest.approx(-0.5, abs=1e-6) and out[1, 1, 2].item() == pytest.approx(-1.0)
    rest = (1 - np.exp(-0.5) - np.exp(-1.0)) / (12 - 2)  # the other 10 ids share the rest
    assert out[1, 1, 0].item() == pytest.approx(np.log(rest), rel=1e-5)
