"""The causal-LM pass: batches as collators give them, both models scored on the counted tokens."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kddoctor.errors import UserError
from kddoctor.lm import evaluate_lm
from kddoctor.metrics.tokens import IGNORE, TokenMetrics


class TinyLM(nn.Module):
    """Next-token logits from the current token (a bigram model): enough to score token by token."""

    def __init__(self, vocab: int = 23, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.out = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.emb(input_ids))


def _batches(vocab: int = 23, n: int = 3):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # right padding
        labels = ids.masked_fill(mask == 0, IGNORE)
        labels[2, :5] = IGNORE  # a prompt the loss skips
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def test_the_pass_scores_the_counted_tokens():
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    got = evaluate_lm(teacher, student, _batches(), name="val")
    want = TokenMetrics()
    with torch.no_grad():
        for b in _batches():
            want.update(teacher(b["input_ids"]), student(b["input_ids"]), b["labels"])
    facts = got.pop("facts")
    assert {k: got[k] for k in want.compute()} == want.compute()
    assert (got["vocab"], got["teacher_vocab"], got["student_vocab"]) == (23, 23, 23)
    assert facts["sequences"] == sum(len(b["input_ids"]) for b in _batches())
    counted = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in _batches())
    assert got["tokens"] == counted
    same = evaluate_lm(teacher, teacher, _batches(), name="val")
    assert same["agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-9)


def test_labels_default_to_the_attended_input_ids():
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    no_labels = [{k: v for k, v in b.items() if k != "labels"} for b in _batches()]
    got = evaluate_lm(teacher, student, no_labels, name="train")
    padded = sum(int((b["attention_mask"][:, 1:] == 0).sum()) for b in _batches())
    assert got["tokens"] == sum(b["input_ids"][:, 1:].numel() for b in _batches()) - padded


@pytest.mark.parametrize(
    "batch, words",
    [
        (
            {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.zeros(2, 5, dtype=torch.long)},
            "no attention_mask",
        ),
        ((torch.zeros(2, 5), torch.zeros(2)), "a mapping with 'input_ids'"),
        ({"input_ids": torch.zeros(5, dtype=torch.long)}, "[batch, tokens]"),
        ({"input_ids": torch.zeros(2, 5)}, "integer token ids"),
        ({"input_ids": [[1, 2, 3], [1, 2]]}, "rectangular [batch, tokens] array"),
        (
            {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, 1)},
            "attention_mask must have the shape of input_ids",
        ),
        (  # the embedding has 23 rows
            {"input_ids": torch.full((2, 5), 40), "attention_mask": torch.ones(2, 5)},
            "the teacher raised IndexError",
        ),
        (
            {
                "input_ids": torch.ones(2, 5, dtype=torch.long),
                "attention_mask": torch.ones(2, 5),
                "labels": torch.full((2, 5), 99),
            },
            "labels must be -100 (not counted) or token ids below the vocabulary (23); found 99",
        ),
        (
            {
                "input_ids": torch.ones(2, 5, dtype=torch.long),
                "attention_mask": torch.ones(2, 5),
                "labels": torch.full((2, 5), -1),
            },
            "found -1",
        ),
    ],
)
def test_bad_batches_are_one_clear_line(batch, words):
    with pytest.raises(UserError) as e:
        evaluate_lm(TinyLM(), TinyLM(), [batch], name="train")
    assert words in str(e.value) and "train batch 0" in str(e.value)


def test_a_model_whose_forward_takes_other_arguments_is_one_line():
    class Positional(TinyLM):
        def forward(self, x):
            return self.out(self.emb(x))

    with pytest.raises(UserError) as e:
        evaluate_lm(TinyLM(), Positional(), _batches(n=1), name="train")
    said = str(e.value)
    assert "train batch 0: the student's forward does not take" in said
    assert "model(input_ids=ids, attention_mask=mask)" in said


def test_labels_shifted_already_are_refused_and_aligned_ones_pass():
    b = _batches(n=1)[0]
    shifted = dict(b, labels=torch.cat([b["labels"][:, 1:], torch.full((4, 1), IGNORE)], 1))
    with pytest.raises(UserError, match="the labels look shifted already"):
        evaluate_lm(TinyLM(), TinyLM(), [shifted], name="train")
    assert evaluate_lm(TinyLM(), TinyLM(), [b], name="train")["tokens"] > 0


def test_one_shot_streams_are_probed_from_the_rows_the_pass_sampled():
    from kddoctor import diagnose

    d = diagnose(TinyLM(seed=1), TinyLM(seed=2), iter(_batches()), iter(_batches(n=2)), task="causal-lm")
    probes = {f.id: f for f in d.checks if f.id in ("capacity_probe", "alpha_sensitivity")}
    assert all(f.status.value in ("pass", "warn", "fail") for f in probes.values()), probes
    assert probes["capacity_probe"].evidence["fit_sequences"] == 12  # every row of the 3 train batches


def test_a_loader_that_raises_is_named_with_its_batch():
    def stream():
        yield _batches(n=1)[0]
        raise OSError("disk gone")

    with pytest.raises(UserError, match="the val loader raised at batch 1: OSError: disk gone"):
        evaluate_lm(TinyLM(), TinyLM(), stream(), name="val")


def test_padded_vocabularies_need_the_flag():
    teacher, student = TinyLM(vocab=23), TinyLM(vocab=29)  # student's extra rows: padding
    batches = _batches(vocab=23)
    with pytest.raises(UserError, match="--allow-vocab-truncation"):
        evaluate_lm(teacher, student, batches, name="val")
    got = evaluate_lm(teacher, student, batches, name="val", allow_vocab_truncation=True)
    assert got["tokens"] > 0 and 0.0 <= got["agreement"] <= 1.0


def test_a_split_without_counted_tokens_is_refused():
    b = _batches(n=1)[0]
    b["labels"] = torch.full_like(b["labels"], IGNORE)
    with pytest.raises(UserError, match="no counted tokens"):
        evaluate_lm(TinyLM(), TinyLM(), [b], name="val")


def test_diagnose_lm_gives_the_token_gap_picture_checks_and_causes(tmp_path):
    import json

    from kddoctor import diagnose, list_checks
    from kddoctor.diagnosis import Diagnosis
    from kddoctor.gate import schema_problem
    from kddoctor.report import render_html

    d = diagnose(
        TinyLM(seed=1),
        TinyLM(seed=2),
        _batches(),
        _batches(n=2),
        task="causal-lm",
        teacher_spec="t",
        student_spec="s",
    )
    assert d.run["task"] == "causal-lm" and d.run["vocab"] == 23
    from kddoctor.causes import CAUSE_IDS

    assert [f.id for f in d.checks] == list_checks("causal-lm")
    assert d.verdict["kind"] in ("likely", "healthy") and {c["id"] for c in d.causes} == set(CAUSE_IDS)
    assert d.metrics["val"]["n"] == sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in _batches(n=2))
    lo, hi = d.metrics["val"]["ci95"]["agreement"]
    assert lo <= d.metrics["val"]["agreement"] <= hi
    assert any("per counted token" in n for n in d.notes)
    d.save(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert schema_problem(doc) is None
    html = (tmp_path / "report.html").read_text()
    assert "Agreement by position" in html and "top-5 overlap" in html
    # the token-level probes ran (the batches are lists: re-readable) and their figures are drawn
    probes = {f.id: f.status.value for f in d.checks if f.id in ("capacity_probe", "alpha_sensitivity")}
    assert len(probes) == 2 and set(probes.values()) <= {"pass", "warn", "fail"}, probes
    assert 'data-fig="fit"' in html and 'data-fig="sweep"' in html
    assert render_html(Diagnosis.from_dict(doc)) == html  # the report rebuilds from results.json


LM_FILES = """
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=23, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.out = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.emb(input_ids))


def teacher():
    return TinyLM(seed=1)


def student():
    return TinyLM(seed=2)


def wide_student():
    return TinyLM(vocab=29, seed=2)


def loaders():
    g = torch.Generator().manual_seed(0)
    def split(n):
        ids = torch.randint(0, 23, (n, 12), generator=g)
        mask = torch.ones_like(ids)
        return [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4], "labels": ids[i : i + 4]}
                for i in range(0, n, 4)]
    return {"train": split(16), "val": split(8)}
"""


def _lm_cli(tmp_path, *extra, student="student"):
    from typer.testing import CliRunner

    from kddoctor.cli import app

    (tmp_path / "lm_files.py").write_text(LM_FILES)
    f = tmp_path / "lm_files.py"
    args = ["diagnose", "--teacher", f"{f}:teacher", "--student", f"{f}:{student}", "--data", f"{f}:loaders"]
    return CliRunner().invoke(app, [*args, "--quiet", "--out", str(tmp_path / "out"), *extra])


def test_the_cli_diagnoses_a_causal_lm_pair(tmp_path):
    import json

    res = _lm_cli(tmp_path, "--task", "causal-lm")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["run"]["task"] == "causal-lm" and doc["run"]["kd_reduction"] == "token"
    assert {c["id"] for c in doc["checks"]} >= {"generalization_gap", "lm_mask_parity", "lm_vocab_parity"}
    assert doc["metrics"]["train"]["n"] == 4 * 4 * 11


@pytest.mark.parametrize(
    "extra, student, words",
    [
        (("--num-classes", "23"), "student", "holds input_ids: a causal-LM batch; pass --task causal-lm"),
        (("--task", "causal-lm"), "wide_student", "--allow-vocab-truncation"),
        (("--task", "vision"), "student", "--task must be one of classification, causal-lm"),
        (("--task", "causal-lm", "--teacher", "hf:/nowhere"), "student", "no such directory"),
        (("--teacher-top-k", "5"), "student", "add --task causal-lm"),
        (("--task", "causal-lm", "--kd-dtype", "fp8"), "student", "--kd-dtype must be one of"),
        (("--task", "causal-lm", "--train-samples", "abc"), "student", "--train-samples must be a positive"),
        (("--allow-vocab-truncation",), "student", "add --task causal-lm"),
        (
            ("--task", "causal-lm", "--teacher-top-k", "500"),
            "student",
            "is not below the vocabulary (23 rows)",
        ),
        (("--task", "causal-lm", "--alpha-on", "foo"), "student", "--alpha-on must be one of kd, ce"),
    ],
)
def test_causal_lm_bad_inputs_are_one_line(tmp_path, extra, student, words):
    res = _lm_cli(tmp_path, *extra, student=student)
    assert res.exit_code == 2 and words in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1


def test_the_lm_demo_runs_and_names_its_planted_cause(tmp_path):
    import json

    from typer.testing import CliRunner

    from kddoctor.cli import app

    pytest.importorskip("transformers")
    args = ["demo", "--task", "causal-lm", "--quick", "--quiet", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["task"] == "causal-lm" and doc["run"]["vocab"] == 256
    assert doc["run"]["teacher"].startswith("hf:") and doc["run"]["quick"] is True
    # the demo student kept padding inside its loss: it learned to predict the pad token
    assert doc["verdict"]["lead"] == "distribution_mismatch", doc["verdict"]
    assert len(doc["details"]["lm"]["val"]["agreement_by_position"]) == 63
    # its val text is other standard-library files (one of them digit-heavy), prepared like train: no
    # token class vanished, and the fp32 KD term gets no advice to compute it in fp32
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["preprocessing_parity"]["status"] != "fail", checks["preprocessing_parity"]["summary"]
    remedies = " ".join(r for c in doc["causes"] for r in c["remedies"])
    assert "Compute the KD term in fp32" not in remedies
    html = (tmp_path / "report.html").read_text()
    assert "Agreement by position" in html and "tokens (" in html
    assert "BatchNorm / dropout mode parity" not in html and "Per-class agreement" not in html


def _same_numbers(a, b, path: str = "metrics") -> None:
    """Equal structure and numbers; on CUDA the float64 histogram sums (index_add_) are atomic, so their
    order, and a last digit, may differ between two runs."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and torch.cuda.is_available():
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), path
    else:
        assert a == b, path


def test_every_sampling_and_output_flag_of_an_image_run_works_for_tokens(tmp_path):
    """--limit, --train-samples, --val-samples, --save-logits and the teacher cache, as for images."""
    import json

    import numpy as np

    cache = tmp_path / "cache"
    res = _lm_cli(
        tmp_path,
        "--task",
        "causal-lm",
        "--train-samples",
        "8",
        "--val-samples",
        "4",
        "--save-logits",
        "--cache-dir",
        str(cache),
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["run"]["sequences"] == {"train": 8, "val": 4}  # whole batches' rows, by content key
    assert any(n.startswith("train: the 8 sequences") or "8 samples" in n for n in doc["notes"]), doc["notes"]
    z = np.load(tmp_path / "out" / "logits.npz")
    assert z["val_teacher"].shape == (doc["metrics"]["val"]["n"], 23) and z["val_targets"].shape == (
        doc["metrics"]["val"]["n"],
    )
    assert doc["run"]["timings"]["teacher_cache"]["train"]["misses"] > 0
    again = _lm_cli(
        tmp_path,
        "--task",
        "causal-lm",
        "--train-samples",
        "8",
        "--val-samples",
        "4",
        "--cache-dir",
        str(cache),
    )
    assert again.exit_code == 0, again.stderr
    doc2 = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc2["run"]["timings"]["teacher_cache"]["train"]["misses"] == 0  # the teacher pass was skipped
    _same_numbers(doc2["metrics"], doc["metrics"])
    # a split whose teacher logits exceed what the cache keeps runs uncached, and the run says so
    import kddoctor.lm.engine as engine

    small = 4 * 11 * 23 * 2  # two batches of 4 sequences, 11 tokens, 23 ids
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "CACHE_ELEMS", small)
        big = _lm_cli(tmp_path, "--task", "causal-lm", "--train-samples", "16", "--cache-dir", str(cache))
    assert big.exit_code == 0, big.stderr
    doc4 = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc4["run"]["timings"]["teacher_cache"]["train"] == {"uncached": small}
    assert any(n.startswith("train: the teacher cache keeps at most") for n in doc4["notes"]), doc4["notes"]
    limited = _lm_cli(tmp_path, "--task", "causal-lm", "--limit", "4", "--no-cache")
    assert limited.exit_code == 0, limited.stderr
    doc3 = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc3["run"]["sequences"] == {"train": 4, "val": 4}


def test_old_lm_check_ids_read_as_todays(tmp_path):
    """results.json of the previous release (lm_gap, lm_capacity, lm_alpha) rebuilds and gates."""
    import json

    from kddoctor.diagnosis import Diagnosis
    from kddoctor.gate import evaluate, load_policy

    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache")
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    old = {"generalization_gap": "lm_gap", "capacity_probe": "lm_capacity", "alpha_sensitivity": "lm_alpha"}
    for c in doc["checks"]:
        c["id"] = old.get(c["id"], c["id"])
    doc["details"]["checks"] = {old.get(k, k): v for k, v in doc["details"]["checks"].items()}
    back = Diagnosis.from_dict(doc)
    assert back.finding("generalization_gap") is not None and back.finding("lm_gap") is None
    policy = tmp_path / "p.toml"
    policy.write_text('[gate]\nfail_on_check = ["lm_gap"]\n')
    verdict = evaluate(doc, load_policy(policy))
    assert [r["rule"] for r in verdict["rules"]] == ["fail_on_check:generalization_gap"], verdict["rules"]


def test_an_lm_report_rebuilds_byte_identically_and_gates(tmp_path):
    """`kddoctor report results.json` rebuilds an LM run's report.html and report.md byte for byte, and
    `kddoctor gate` reads the LM results (its agreement rules are per counted token)."""
    import json

    from typer.testing import CliRunner

    from kddoctor.cli import app

    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache")
    assert res.exit_code == 0, res.stderr
    out, again = tmp_path / "out", tmp_path / "again"
    rebuilt = CliRunner().invoke(app, ["report", str(out / "results.json"), "--out", str(again), "--quiet"])
    assert rebuilt.exit_code == 0, rebuilt.output
    for name in ("report.html", "report.md"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    doc = json.loads((out / "results.json").read_text())
    agreement = doc["metrics"]["val"]["agreement"]
    for bar, code in ((agreement - 0.01, 0), (agreement + 0.01, 1)):
        policy = tmp_path / "p.toml"
        policy.write_text(f"[gate]\nmin_val_agreement = {bar}\n")
        gated = CliRunner().invoke(
            app, ["gate", str(out / "results.json"), "--policy", str(policy), "--quiet"]
        )
        assert gated.exit_code == code, gated.output


def _capture(tmp_path, k: int, seed: int = 0):
    """A top-k capture of the LM_FILES teacher on the factory's batches (or on other batches: seed)."""
    import importlib.util

    from kddoctor.lm.offline import capture

    (tmp_path / "lm_files.py").write_text(LM_FILES)
    spec = importlib.util.spec_from_file_location("lm_files_capture", tmp_path / "lm_files.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = mod.loaders()
    if seed:  # the capture of other rows than the ones diagnosed
        g = torch.Generator().manual_seed(seed)
        for b in data["train"]:
            b["input_ids"] = torch.randint(0, 23, b["input_ids"].shape, generator=g)
    batches = list(reversed(data["train"])) + data["val"]  # order does not matter: rows match by content
    return capture(mod.teacher(), batches, k, tmp_path / f"teacher_top{k}_{seed}.npz")


def test_an_offline_topk_teacher_diagnoses_the_pair_without_loading_the_teacher(tmp_path):
    """`--teacher topk:FILE`: the teacher's top-k log-probs per token, captured offline, stand in for the
    teacher; with k the whole vocabulary they give the live teacher's metrics to float precision."""
    import json

    full = _capture(tmp_path, k=23)
    live = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache")
    assert live.exit_code == 0, live.stderr
    live_doc = json.loads((tmp_path / "out" / "results.json").read_text())
    offline = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{full}")
    assert offline.exit_code == 0, offline.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    for split in ("train", "val"):
        for key in ("loss", "acc"):
            want = live_doc["metrics"][split]["teacher"][key]
            assert doc["metrics"][split]["teacher"][key] == pytest.approx(want, rel=1e-4, abs=1e-6)
        # on CUDA the live teacher's logits come out of bf16 autocast; the capture holds fp32 log-probs
        rel = 1e-3 if torch.cuda.is_available() else 1e-4
        assert doc["metrics"][split]["kl"] == pytest.approx(live_doc["metrics"][split]["kl"], rel=rel)
    assert doc["run"]["teacher"].startswith("topk:")
    skipped = next(c for c in doc["checks"] if c["id"] == "exposure_bias")
    assert skipped["status"] == "skipped" and "offline capture" in skipped["summary"]


class _NextTokenLM(nn.Module):
    """A teacher that knows the text: each token x is followed by (3x + 1) % V or, less often, by
    (3x + 2) % V, and its logits say so."""

    def __init__(self, vocab: int = 23) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, ((3 * input_ids + 1) % self.vocab)[..., None], 4.0)
        return logits.scatter_(-1, ((3 * input_ids + 2) % self.vocab)[..., None], 2.0)


def _pattern_batches(vocab: int = 23, rows: int = 48, length: int = 16):
    """Rows of that text from random starts (the second follower one time in five)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    second = torch.rand(rows, length, generator=g) < 0.2
    for i in range(1, length):
        ids[:, i] = (3 * ids[:, i - 1] + 1 + second[:, i].long()) % vocab
    mask = torch.ones_like(ids)
    return [{"input_ids": ids[i : i + 8], "attention_mask": mask[i : i + 8]} for i in range(0, rows, 8)]


def _read_capture(path, batches, vocab=23):
    from kddoctor.lm.offline import OfflineTeacher

    teacher = OfflineTeacher(path, vocab)
    for b in batches:
        teacher(b["input_ids"], b["attention_mask"])
    teacher.alignment.decide()
    return teacher.alignment


def test_a_capture_whose_log_probabilities_are_not_its_rows_is_refused_by_content(tmp_path):
    """The rows match by their tokens, but the top-k arrays were reordered apart from input_ids, or written
    one position off: refused in one line naming which; the aligned capture of the same teacher, and the
    capture of a teacher that predicts nothing, pass."""
    import numpy as np

    from kddoctor.lm.offline import capture

    batches = _pattern_batches()
    good = capture(_NextTokenLM(), batches, 5, tmp_path / "good.npz")
    alignment = _read_capture(good, batches)
    assert alignment.positions >= 256 and alignment.hits[1] > 2 * max(alignment.hits[0], alignment.hits[2])
    assert alignment.hits[1] == alignment.positions  # its top 5 always holds the next token
    blind = capture(TinyLM(seed=4), batches, 5, tmp_path / "blind.npz")  # knows nothing: nothing to refuse
    _read_capture(blind, batches)
    arr = dict(np.load(good))
    order = np.random.default_rng(0).permutation(len(arr["input_ids"]))
    cases = {
        "reordered": {k: arr[k][order] for k in ("top_ids", "top_logprobs")},
        "late": {k: np.roll(arr[k], 1, 1) for k in ("top_ids", "top_logprobs")},
        "early": {k: np.roll(arr[k], -1, 1) for k in ("top_ids", "top_logprobs")},
    }
    said = {
        "reordered": "are not its input_ids rows",
        "late": "one position late",
        "early": "one position early",
    }
    for name, swapped in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **{**arr, **swapped})
        with pytest.raises(UserError, match=said[name]) as err:
            _read_capture(path, batches)
        assert "\n" not in str(err.value)


def test_a_misaligned_topk_capture_is_one_line_and_exit_2(tmp_path):
    other = _capture(tmp_path, k=5, seed=7)
    res = _lm_cli(tmp_path, "--task", "causal-lm", "--no-cache", "--teacher", f"topk:{other}")
    assert res.exit_code == 2 and "no captured row holds the tokens" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    missing = _lm_cli(tmp_path, "--task", "causal-lm", "--teacher", f"topk:{tmp_path / 'none.npz'}")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    text = _lm_cli(tmp_path, "--task", "causal-lm", "--teacher", f"topk:{tmp_path / 'lm_files.py'}")
    assert text.exit_code == 2 and "pickled objects, which kddoctor never loads" in text.stderr
    assert "allow_pickle" not in text.stderr  # numpy's advice to load it unsafely is not passed on


def test_a_top_k_capture_is_compared_at_its_nll_floor(tmp_path):
    """A top-k capture spreads its missing mass evenly, which reads its teacher's NLL off the teacher's
    own; the floor (each token outside the top k given all of the missing mass) never exceeds it. With
    every id captured, the three are one number."""
    from kddoctor.lm.offline import OfflineTeacher, capture
    from kddoctor.lm.probes import Probes

    batches = _batches(n=6)
    rows = tuple(torch.cat([b[key] for b in batches]) for key in ("input_ids", "attention_mask", "labels"))
    teacher, student, cpu = TinyLM(seed=1), TinyLM(seed=2), torch.device("cpu")
    live = Probes(teacher, student, rows, rows, vocab=23, device=cpu).score(student, "val")
    for k in (3, 23):
        path = capture(teacher, batches, k, tmp_path / f"top{k}.npz")
        read = Probes(OfflineTeacher(path, 23), student, rows, rows, vocab=23, device=cpu)
        got = read.teacher_nll_floor("val")
        assert got["tokens"] == int((rows[2][:, 1:] != IGNORE).sum())
        assert got["student"] == pytest.approx(live["loss"], rel=1e-6)
        if k == 23:
            assert got["floor"] == pytest.approx(live["teacher_loss"], rel=1e-5)
            assert got["read"] == pytest.approx(live["teacher_loss"], rel=1e-5)
        else:
            with torch.no_grad():
                top = teacher(rows[0])[:, :-1].topk(k, -1).indices
            y, counted = rows[2][:, 1:], rows[2][:, 1:] != IGNORE
            outside = (top != y[..., None]).all(-1)[counted].double().mean()
            assert 0 < outside < 1  # each outside token's floor is its read NLL less log(23 - k)
            assert got["read"] - got["floor"] == pytest.approx(float(outside) * math.log(23 - k), rel=1e-5)
            assert got["floor"] < live["teacher_loss"] and abs(got["read"] - live["teacher_loss"]) > 0.01


@pytest.mark.parametrize(
    "batch, got",
    [
        ((torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)), "got a tuple of 2"),
        ({"ids": torch.zeros(2, 4, dtype=torch.long)}, "got a mapping with keys 'ids'"),
        (torch.zeros(2, 4, dtype=torch.long), "got a Tensor"),
    ],
)
def test_a_batch_that_is_no_causal_lm_mapping_says_what_it_is(batch, got):
    from kddoctor.lm.engine import lm_batch

    with pytest.raises(UserError) as e:
        lm_batch(batch, "train", 0)
    assert "train batch 0: a causal-LM batch is a mapping with 'input_ids'" in str(e.value)
    assert str(e.value).endswith(got)
