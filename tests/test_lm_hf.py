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
    return {k: f"hf:{root / k}" for k in [*["teacher", "student", "other_tok", "padded"], "empty"]}


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


def test_padded_vocabulary_rows_need_the_flag_and_are_reported(tmp_path, hf_dirs):
    res, _ = _run(tmp_path, hf_dirs["teacher"], hf_dirs["padded"])
    assert res.exit_code == 2 and "--allow-vocab-truncation" in res.stderr
    res, doc = _run(tmp_path, hf_dirs["teacher"], hf_dirs["padded"], "--allow-vocab-truncation")
    assert res.exit_code == 0, res.output
    assert _check(doc, "lm_vocab_parity")["evidence"]["padded_rows"] == 8
    assert any("compared on the first 256 rows" in n for n in doc["notes"])


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
    bad, _ = _run(tmp_path, hf_dirs["teacher"], hf_dirs["student"], "--teacher-dtype", "int4")
    assert bad.exit_code == 2 and "--teacher-dtype must be one of" in bad.stderr
