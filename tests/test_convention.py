"""KDConvention: one value for the KD objective, its effective weights, and the user's own words."""

import math
import shlex

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kddoctor.convention import PRESETS, KDConvention
from kddoctor.errors import UserError
from kddoctor.flags import resolve


def _batch(seed=2, classes=5, n=8):
    torch.manual_seed(seed)
    return torch.randn(n, classes), torch.randn(n, classes), torch.randint(0, classes, (n,))


def test_alpha_conventions_are_mirror_images():
    s, t, y = _batch()
    a = KDConvention.from_alpha(0.8, "kd").loss(s, t, y)
    b = KDConvention.from_alpha(0.2, "ce").loss(s, t, y)
    assert torch.allclose(a, b)


def test_loss_is_the_written_formula():
    s, t, y = _batch(3)
    conv = resolve(preset="mdistiller", ce_weight=0.1, kd_weight=0.9, temperature=4.0)
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(conv.loss(s, t, y), 0.1 * F.cross_entropy(s, y) + 0.9 * kl, atol=1e-6)


def test_effective_weights():
    w = KDConvention.from_alpha(0.9, temperature=4.0, t2=False, reduction="mean").effective(10)
    assert w["kd_effective"] == pytest.approx(0.9 / 16 / 10) and w["ce"] == pytest.approx(0.1)
    assert KDConvention.from_alpha(0.7).kd_share(10) == pytest.approx(0.7)


def test_sum_reduction_uses_the_training_batch_size():
    conv = resolve(alpha=0.5, reduction="sum", train_batch_size=128)
    assert conv.effective(10)["reduction_scale"] == 128
    s, t, y = _batch(4)
    want = 0.5 * F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16 * 128
    assert torch.allclose(conv.terms(s, t, y)[0], want, rtol=1e-5)
    with pytest.raises(UserError, match="--train-batch-size"):
        resolve(alpha=0.5, reduction="sum")


def test_torchdistill_alpha_zero_is_the_bare_kl():
    conv = resolve(preset="torchdistill", ce_weight=0.0, kd_weight=0.5, temperature=4.0)
    s, t, y = _batch(5)
    bare = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
    assert conv.bare_kl and torch.allclose(conv.loss(s, t, y), bare, atol=1e-6)
    assert "bare KL" in conv.sentence(5)


CONVENTIONS = [
    resolve(),
    resolve(alpha=0.3, alpha_on="ce"),
    resolve(alpha=0.6, no_t2=True, reduction="mean"),
    resolve(alpha=0.6, reduction="sum", train_batch_size=32),
    resolve(ce_weight=0.5, kd_weight=2.0),
    resolve(preset="torchdistill", alpha=0.9),
    resolve(preset="torchdistill", ce_weight=0.9, kd_weight=0.3),
    resolve(preset="mdistiller"),
    resolve(preset="repdistiller", ce_weight=1.0, kd_weight=0.9),
    resolve(preset="timm"),
    resolve(preset="deit", alpha=0.5, temperature=3.0),
]


@pytest.mark.parametrize("conv", CONVENTIONS, ids=lambda c: f"{c.preset}-{c.form}-{c.reduction}")
@settings(max_examples=40, deadline=None)
@given(share=st.floats(0.0, 1.0), temperature=st.sampled_from([1.0, 2.0, 4.0, 8.0]))
def test_to_user_keeps_the_effective_share(conv, share, temperature):
    """to_user(a, T) is the user's setting whose effective KD share is a (their T², reduction, total)."""
    user = conv.to_user(share, temperature, 10)
    got, t_back = user.from_user(10)
    assert t_back == temperature and got == pytest.approx(share, abs=2e-3)
    assert (user.preset, user.form, user.reduction, user.t2) == (
        conv.preset,
        conv.form,
        conv.reduction,
        conv.t2,
    )
    if conv.form == "weights":  # their total weight (their step size) is kept
        assert user.ce_weight + user.kd_weight == pytest.approx(conv.ce_weight + conv.kd_weight, rel=5e-3)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("conv", CONVENTIONS, ids=lambda c: f"{c.preset}-{c.form}-{c.reduction}")
def test_code_is_written_where_the_user_writes_it(conv):
    code = conv.code()
    for name, value in conv.user_params().items():
        assert name in code and f"{value:g}" in code
    if conv.code_lang == "python":  # a 'sum' convention's batch is its training batch
        s, t, y = _batch(n=conv.train_batch_size or 8)
        ns = {"F": F, "s": s, "t": t, "y": y}
        exec(code, ns)  # noqa: S102  the snippet is the loss: it must equal the convention's
        assert torch.allclose(ns["loss"], conv.loss(s, t, y), rtol=1e-3)
    elif conv.code_lang == "shell":
        assert shlex.split(code)[0] == "python"
    else:  # YAML: key: value lines
        assert all(":" in line for line in code.splitlines())


def test_the_default_preset_named_explicitly_still_takes_alpha_on():
    assert resolve(preset="kd", alpha=0.2, alpha_on="ce").setting() == "alpha=0.2, T=4"
    assert resolve(preset="kd", alpha=0.2, alpha_on="ce").ce_weight == 0.2


def test_user_words_per_preset():
    assert resolve(preset="torchdistill", alpha=0.1).user_params() == {
        "alpha": 0.1,
        "beta": 0.9,
        "temperature": 1.0,
    }
    assert resolve(preset="mdistiller").setting() == "CE_WEIGHT=0.1, KD_WEIGHT=0.9, TEMPERATURE=4"
    assert resolve(alpha=0.1, alpha_on="ce").to_user(0.5, 4.0, 10).setting() == "alpha=0.5, T=4"
    assert resolve(preset="repdistiller", ce_weight=0.1, kd_weight=0.9).weight_axis.startswith("-a")
    deit = resolve(preset="deit", alpha=0.5)
    assert deit.reduction == "mean" and deit.to_user(0.5, 1.0, 10).kd_weight > 0.9  # 'mean' needs more


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(alpha=0.5, ce_weight=0.1, kd_weight=0.9), ("--alpha", "--ce-weight")),
        (dict(alpha_on="kd", ce_weight=0.1, kd_weight=0.9), ("--alpha-on", "--ce-weight")),
        (dict(preset="mdistiller", alpha=0.3), ("--alpha", "--convention mdistiller")),
        (dict(preset="deit", no_t2=True), ("--no-t2", "--convention deit")),
        (dict(preset="deit", reduction="batchmean"), ("--kd-reduction batchmean", "--convention deit")),
        (dict(preset="torchdistill", alpha_on="kd"), ("--alpha-on kd", "--convention torchdistill")),
        (dict(preset="deit", ce_weight=0.5, kd_weight=1.0), ("--convention deit", "sum to 1")),
        (dict(ce_weight=0.2), ("--ce-weight", "--kd-weight")),
        (dict(preset="fitnets"), ("--convention", "torchdistill")),
        (dict(alpha=1.5), ("--alpha",)),
        (dict(ce_weight=0.0, kd_weight=0.0), ("both 0",)),
    ],
)
def test_conflicting_or_bad_flags_name_both(kw, words):
    with pytest.raises(UserError) as e:
        resolve(**kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_presets_are_cited():
    for p in PRESETS.values():
        assert p.citation and (p.name == "kd" or ("@" in p.citation and ".py:" in p.citation))


def test_round_trip_through_results_json():
    conv = resolve(preset="torchdistill", ce_weight=0.9, kd_weight=0.3, temperature=2.0)
    d = conv.to_dict(10)
    assert KDConvention.from_dict(d) == conv and d["user"] == {"alpha": 0.9, "beta": 0.3, "temperature": 2.0}
    assert math.isclose(d["alpha_kd_equivalent"], conv.kd_share(10))


def test_a_torchdistill_run_reads_in_torchdistill_words(diagnose_scenario, tmp_path):
    """alpha on CE, beta on KD: the console, report.md and report.html say alpha/beta, never 'alpha on KD'."""
    import io

    from rich.console import Console

    from kddoctor.report.terminal import render_summary

    diag = diagnose_scenario("fw_torchdistill_ce_heavy")
    diag.save(tmp_path)
    buf = io.StringIO()
    render_summary(diag.to_dict(), Console(file=buf, width=300), str(tmp_path))
    texts = {
        "console": buf.getvalue(),
        "markdown": (tmp_path / "report.md").read_text(),
        "html": (tmp_path / "report.html").read_text(),
    }
    stated = "alpha=0.9, beta=0.1, temperature=4"
    rec = diag.finding("alpha_sensitivity").evidence["recommended"]
    assert rec and "beta=" in rec["setting"] and rec["code"].startswith("alpha: ")
    for where, text in texts.items():
        assert stated in text, where
        assert "alpha on KD" not in text and "on the KD term" not in text, where
    assert "alpha (CE weight; beta = 1 - alpha)" in texts["html"]  # the sweep's axis is their alpha
    proposed = rec["setting"].split(" (")[0]  # e.g. alpha=0, beta=1, temperature=8
    assert all(proposed in text for text in texts.values())
