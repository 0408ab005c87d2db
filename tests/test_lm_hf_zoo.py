"""The Hugging Face LM zoo in CI: a Llama-architecture family (RoPE, RMSNorm, SwiGLU, a BPE tokenizer
trained on other text) distilled on the standard library's English documentation and diagnosed as
hf: directories through the command line. Its other families and both draws run in bench/lm_zoo.py
(the README's tables); here, on the tuning draw: a healthy student at 1/20 of its teacher stays calm, a
student far too small is named with its train-side evidence, students distilled on lower-cased text
(all of it, and half its documents) are named with the statistic that moved, and their fix is calm."""

import pytest

from kddoctor.zoo import lm

FAMILY = "llama"


@pytest.mark.slow
def test_a_healthy_student_at_a_twentieth_of_its_teacher_is_calm():
    diag = lm.run(f"{FAMILY}:healthy_h20", draw=0)
    assert diag.verdict["kind"] == "healthy", (diag.verdict["sentence"], diag.causes[:2])


@pytest.mark.slow
def test_a_student_far_too_small_is_named_with_its_train_side_evidence():
    diag = lm.run(f"{FAMILY}:too_small_severe", draw=0)
    v = diag.verdict
    assert v["kind"] == "likely" and v["lead"] == "insufficient_capacity", (v, diag.causes[:2])
    assert "on its own train text" in v["sentence"]  # the verdict names the train-side evidence


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [f"{FAMILY}:text_lower_severe", f"{FAMILY}:text_lower_mild", f"{FAMILY}:text_lower_severe_fixed"]
)
def test_text_prepared_unlike_val_is_named_and_its_fix_is_calm(name):
    scn = lm.get(name)
    diag = lm.run(scn, draw=0)
    assert lm.judge(scn, diag), (diag.verdict["sentence"], diag.causes[:2])
    if scn.expected:
        parity = diag.finding("preprocessing_parity")
        assert "'upper' token" in parity.summary and parity.status.value == "fail"
        assert any("upper" in r for r in diag.causes[0]["remedies"])  # the remedy names the statistic


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{FAMILY}:kd_alpha_on_ce", f"{FAMILY}:kd_alpha_on_ce_fixed"])
def test_a_loss_its_user_cannot_state_is_named_by_its_fingerprint(name):
    """The user states alpha 0.9 on KD; their code put it on the CE. The per-coordinate fingerprint
    names the loss really trained and the remedy shows it beside the stated one; the fix is calm."""
    scn = lm.get(name)
    diag = lm.run(scn, draw=0)
    assert lm.judge(scn, diag), (diag.verdict["sentence"], diag.causes[:2])
    fp = diag.finding("objective_fingerprint")
    if scn.expected:
        assert fp.status.value == "fail" and fp.evidence["named_member"] == "alpha on the other term"
        said = "stationary for the loss with alpha on the other term"
        assert any(said in r for r in diag.causes[0]["remedies"]), diag.causes[0]["remedies"]
    else:
        assert fp.status.value == "pass", fp.summary
