"""hf:DIR causal LMs (transformers, local files only): loading, tokenizer parity, and bad inputs."""

import json

import pytest

pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from kddoctor.cli import app  # noqa: E402
from kddoctor.zoo.lm_demo import byte_tokenizer, gpt2  # noqa: E402

DATA = ("--data", "kddoctor.zoo.lm:loaders", "--data-arg", "sequences=32")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Random-init GPT-2s saved as hf: directories: teacher, student, one whose tokenizer pads with
    another id, one with 8 padded vocabulary rows, and a directory without a config."""
    import torch

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    for name, (width, layers, vocab_extra, pad) in {
        "teacher": (32, 2, 0, 0),
        "student": (16, 1, 0, 0),
        "other_tok": (16, 1, 0, 10),
        "padded": (16, 1, 8, 0),
        "padded_other_tok": (16, 1, 8, 10),
    }.items():
        model = gpt2(width, layers, 2)
        if vocab_extra:
            model.resize_token_embeddings(256 + vocab_extra)
        model.save_pretrained(root / name)
        tok = byte_tokenizer()
        if pad:
            tok.pad_token = tok.convert_ids_to_tokens(pad)
        tok.save_pretrained(root / name)
    (root / "empty").mkdir()
    return {
        k: f"hf:{root / k}"
        for k in ["teacher", "student", "other_tok", "padded", "padded_other_tok", "empty"]
    }


def _run(tmp_path, teacher, student, *extra):
    out = tmp_path / "out"
    args = ["diagnose", "--teacher", teacher, "--student", student, "--task", "causal-lm", *DATA]
    res = CliRunner().invoke(app, [*args, "--quiet", "--out", str(out), *extra])
    doc = json.loads((out / "results.json").read_text()) if res.exit_code == 0 else None
    return res, doc


def _check(doc, cid):
    return next(c for c in doc["checks"] if c["id"] == cid)


def test_hf_directories_load_and_their_tokenizers_are_compared(tmp_path, hf_dirs):
    res, doc = _run(tmp_path, hf_dirs["teacher"], hf_dirs["student"])
    assert res.exit_code == 0, res.output
    assert doc["run"]["teacher"] == hf_dirs["teacher"] and doc["run"]["kd_reduction"] == "token"
    vocab = _check(doc, "lm_vocab_parity")["evidence"]
    assert vocab["tokenizer_differs"] == 0 and vocab["tokenizers"]["teacher"]["size"] == 256
    assert _check(doc, "lm_mask_parity")["evidence"]["pad_id"] == 0  # from the tokenizer


def test_a_tokenizer_with_other_special_tokens_is_a_mismatch(tmp_path, hf_dirs):
    res, doc = _run(tmp_path, hf_dirs["teacher"], hf_dirs["other_tok"])
    assert res.exit_code == 0, res.output
    check = _check(doc, "lm_vocab_parity")
    assert check["status"] == "fail" and check["evidence"]["tokenizer_differs"] == 1, check


def test_padded_vocabulary_rows_are_compared_away_when_one_tokenizer_proves_them_padding(tmp_path, hf_dirs):
    # both directories carry the same 256-id tokenizer: the student's 8 extra rows are padding no text
    # reaches (151,936 vs 152,064 for one Qwen tokenizer), so no flag is needed; this untrained student
    # still puts 3 % of its probability there, which the check fails on
    res, doc = _run(tmp_path, hf_dirs["teacher"], hf_dirs["padded"])
    assert res.exit_code == 0, res.output
    check = _check(doc, "lm_vocab_parity")
    assert check["evidence"]["padded_rows"] == 8 and check["status"] == "fail", check
    assert "the compared vocabulary drops 3.0%" in check["summary"]
    assert any("compared on the first 256 rows (both carry one tokenizer" in n for n in doc["notes"])
    # rows that hold next to nothing pass, with the reason; the same rows compared on the user's word warn
    from types import SimpleNamespace

    from kddoctor.checks.lm_inputs import lm_vocab_parity

    tok = doc["checks"][[c["id"] for c in doc["checks"]].index("lm_vocab_parity")]["evidence"]["tokenizers"]
    facts = {"teacher_dropped_mass": 0.0, "student_dropped_mass": 0.0002}
    val = {"teacher_vocab": 256, "student_vocab": 264, "vocab": 256, "facts": facts}
    val.update(teacher={"loss": 2.0}, student={"loss": 2.1})
    ev = SimpleNamespace(splits={"val": val}, tokenizers=tok, capture_k=None, probes=None)
    found = lm_vocab_parity(ev)
    assert found.status.value == "pass" and "the rows past it are padding" in found.summary, found.summary
    ev.tokenizers = {"teacher": tok["teacher"], "student": None}
    assert lm_vocab_parity(ev).status.value == "warn"
    # tokenizers that differ prove nothing: the rows are compared away only when the user says so
    res, _ = _run(tmp_path, hf_dirs["teacher"], hf_dirs["padded_other_tok"])
    assert res.exit_code == 2 and "--allow-vocab-truncation" in res.stderr
    res, doc = _run(tmp_path, hf_dirs["teacher"], hf_dirs["padded_other_tok"], "--allow-vocab-truncation")
    assert res.exit_code == 0, res.output
    assert any("compared on the first 256 rows (--allow-vocab-truncation)" in n for n in doc["notes"])


@pytest.mark.parametrize(
    ("which", "extra", "words"),
    [
        ("empty", (), "has no config.json"),
        ("/nowhere/at/all", (), "no such directory"),
        ("student", ("--student-ckpt", "x.pt"), "an hf: directory holds its own weights"),
        ("student", ("--kd-reduction", "perseq"), "--kd-reduction for causal LMs must be one of"),
    ],
)
def test_bad_hf_inputs_are_one_line(tmp_path, hf_dirs, which, extra, words):
    student = hf_dirs.get(which, f"hf:{which}")
    res, _ = _run(tmp_path, hf_dirs["teacher"], student, *extra)
    assert res.exit_code == 2 and words in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_teacher_loaded_through_accelerate_with_a_device_map_gives_the_same_diagnosis(tmp_path, hf_dirs):
    """--teacher-device-map (accelerate) and --teacher-dtype load a teacher as Hugging Face spreads one
    too large for a device; on this machine's one device the metrics equal a plain load's."""
    pytest.importorskip("accelerate")
    res, plain = _run(tmp_path, hf_dirs["teacher"], hf_dirs["student"], "--no-cache")
    assert res.exit_code == 0, res.output
    res, mapped = _run(
        tmp_path,
        hf_dirs["teacher"],
        hf_dirs["student"],
        "--no-cache",
        "--teacher-device-map",
        "cpu",
        "--teacher-dtype",
        "float32",
    )
    assert res.exit_code == 0, res.output
    for split in ("train", "val"):
        assert mapped["metrics"][split]["kl"] == pytest.approx(plain["metrics"][split]["kl"], rel=1e-5)
    assert plain["run"]["teacher_dtype"] == "float32" == mapped["run"]["teacher_dtype"]
    res, half = _run(
        tmp_path, hf_dirs["teacher"], hf_dirs["student"], "--no-cache", "--teacher-dtype", "bfloat16"
    )
    assert res.exit_code == 0 and half["run"]["teacher_dtype"] == "bfloat16", res.output  # stated back
    assert "(teacher in bfloat16)" in (tmp_path / "out" / "report.html").read_text()
    bad, _ = _run(tmp_path, hf_dirs["teacher"], hf_dirs["student"], "--teacher-dtype", "int4")
    assert bad.exit_code == 2 and "--teacher-dtype must be one of" in bad.stderr


@pytest.mark.parametrize("extra", [(), ("--num-classes", "256")])
def test_an_hf_model_without_task_causal_lm_is_told_to_add_it(tmp_path, hf_dirs, extra):
    args = ["diagnose", "--teacher", hf_dirs["teacher"], "--student", hf_dirs["student"], *DATA, *extra]
    res = CliRunner().invoke(app, [*args, "--quiet", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"--teacher {hf_dirs['teacher']} is a causal LM: add --task causal-lm" in res.stderr
