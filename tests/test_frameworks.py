"""The KD-codebase replicas: losses against hand-written formulas and the KDConvention their users state,
checkpoints through kddoctor's weights_only loader."""

import argparse
import collections
import itertools
import re

import pytest
import torch

from kddoctor.models import SAFE_GLOBALS, fit_state_dict, load_state_dict
from kddoctor.zoo.demo import student_cnn
from kddoctor.zoo.frameworks import (
    FRAMEWORKS,
    MDISTILLER,
    REPDISTILLER,
    TIMM,
    TORCHDISTILL,
)

TEMPS = (1.0, 2.0, 4.0, 8.0)
# torchdistill's reduction='mean' reaches F.kl_div(reduction='mean'), which warns on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:reduction.*'mean' divides:UserWarning")


@pytest.fixture(scope="module")
def logits():
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    return s * 3, t * 3, torch.randint(0, 5, (6,), generator=g)


# Reference formulas, written out from the definitions (no F.kl_div, no F.cross_entropy).
def _kl_total(s, t, temp):
    log_ps, log_pt = torch.log_softmax(s / temp, 1), torch.log_softmax(t / temp, 1)
    return (log_pt.exp() * (log_pt - log_ps)).sum()


def _nll(s, y):
    return -torch.log_softmax(s, 1)[torch.arange(len(y)), y]


def _ce(s, y):
    return _nll(s, y).mean()


def _close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), rtol=0, atol=1e-6)


def _via_kddoctor(s, t, y, flags):
    return flags["convention"].loss(s, t, y)


# --- torchdistill --------------------------------------------------------------------------------


def test_torchdistill_loss_matches_formula_and_kddoctor(logits):
    s, t, y = logits
    n, c = s.shape
    for temp, (alpha, beta), red in itertools.product(
        TEMPS, [(0.5, None), (0.9, None), (0.9, 0.1), (1.0, 1.0), (0.3, 2.0)], ["batchmean", "mean", "sum"]
    ):
        kw = {"temperature": temp, "alpha": alpha, "beta": beta, "reduction": red, "batch_size": n}
        kl = _kl_total(s, t, temp) / {"batchmean": n, "mean": n * c, "sum": 1}[red]
        ce = _nll(s, y).sum() if red == "sum" else _ce(s, y)
        w_kd = 1 - alpha if beta is None else beta
        want = alpha * ce + w_kd * temp**2 * kl
        _close(TORCHDISTILL.loss(s, t, y, **{k: v for k, v in kw.items() if k != "batch_size"}), want)
        flags = TORCHDISTILL.kddoctor_flags(**kw)
        conv = flags["convention"]
        assert (conv.ce_weight, conv.kd_weight, conv.preset) == (alpha, w_kd, "torchdistill")
        if red == "sum":  # the CE is summed over the batch too: kddoctor cannot state it
            assert not flags["expressible"] and "sum" in flags["note"]
            assert abs(_via_kddoctor(s, t, y, flags) - want) > 1e-3
        else:
            assert flags["expressible"] and conv.alpha_on == ("ce" if alpha + w_kd == 1 else "kd")
            _close(_via_kddoctor(s, t, y, flags), want)
        assert ("--ce-weight" in flags["note"]) == (alpha + w_kd != 1)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum"])
@pytest.mark.parametrize("alpha,beta", [(0, 0.7), (0.0, None), (None, 0.5)])
def test_torchdistill_alpha_zero_or_none_is_the_bare_kl(logits, alpha, beta, reduction):
    s, t, y = logits
    n, c = s.shape
    for temp in TEMPS:
        kw = {"temperature": temp, "alpha": alpha, "beta": beta, "reduction": reduction}
        bare = _kl_total(s, t, temp) / {"batchmean": n, "mean": n * c, "sum": 1}[reduction]  # no T², no beta
        _close(TORCHDISTILL.loss(s, t, y, **kw), bare)
        flags = TORCHDISTILL.kddoctor_flags(**kw, batch_size=n)
        conv = flags["convention"]
        assert flags["expressible"] and conv.bare_kl and conv.ce_weight == 0.0
        assert conv.effective(c)["t2_factor"] == 1 / temp**2 and conv.effective(c)["kd"] == 1.0
        _close(_via_kddoctor(s, t, y, flags), bare)


def test_torchdistill_without_targets_is_the_bare_kl_and_alpha_beta_none_fails(logits):
    s, t, _ = logits
    _close(TORCHDISTILL.loss(s, t, None, temperature=4.0, alpha=0.5), _kl_total(s, t, 4.0) / len(s))
    with pytest.raises(TypeError):
        TORCHDISTILL.loss(s, t, None, temperature=4.0)
    with pytest.raises(TypeError):
        TORCHDISTILL.kddoctor_flags(temperature=4.0)


# --- mdistiller ----------------------------------------------------------------------------------


def test_mdistiller_loss_matches_formula_and_kddoctor(logits):
    s, t, y = logits
    for temp, (cw, kw_) in itertools.product(
        TEMPS, [(0.1, 0.9), (0.5, 0.5), (1.0, 1.0), (1.0, 9.0), (0.0, 1.0)]
    ):
        kw = {"ce_weight": cw, "kd_weight": kw_, "temperature": temp}
        want = cw * _ce(s, y) + kw_ * temp**2 * _kl_total(s, t, temp) / len(s)
        _close(MDISTILLER.loss(s, t, y, **kw), want)
        flags = MDISTILLER.kddoctor_flags(**kw)
        conv = flags["convention"]
        assert flags["expressible"] and (conv.preset, conv.ce_weight, conv.kd_weight) == (
            "mdistiller",
            cw,
            kw_,
        )
        _close(_via_kddoctor(s, t, y, flags), want)
    _close(MDISTILLER.loss(s, t, y), MDISTILLER.loss(s, t, y, **MDISTILLER.defaults))
    assert MDISTILLER.kddoctor_flags()["convention"].alpha == pytest.approx(0.9)


# --- timm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,distill,w",
    [(None, None, (1.0, 1.0)), (0.3, None, (0.3, 0.7)), (None, 0.5, (1.0, 0.5)), (0.2, 2.0, (0.2, 2.0))],
)
def test_timm_loss_weight_modes_match_formula_and_kddoctor(logits, task, distill, w):
    s, t, y = logits
    for temp, eps in itertools.product(TEMPS, [0.0, 0.1]):
        kw = {"task_loss_weight": task, "distill_loss_weight": distill, "temperature": temp, "smoothing": eps}
        logp = torch.log_softmax(s, 1)
        ce = ((1 - eps) * _nll(s, y) - eps * logp.mean(1)).mean()
        want = w[0] * ce + w[1] * temp**2 * _kl_total(s, t, temp) / len(s)
        _close(TIMM.loss(s, t, y, **kw), want)
        kd_only = TIMM.loss(s, t, y, **{**kw, "task_loss_weight": 0.0, "distill_loss_weight": 1.0})
        smoothed = torch.nn.functional.cross_entropy(
            s, y, label_smoothing=eps
        )  # torch's own smoothing agrees
        _close(TIMM.loss(s, t, y, **kw), w[0] * smoothed + w[1] * kd_only)
        flags = TIMM.kddoctor_flags(**kw)
        conv = flags["convention"]
        assert (conv.ce_weight, conv.kd_weight) == pytest.approx(w) and conv.preset == "timm"
        if eps:  # train.py's default --smoothing 0.1: kddoctor's CE has no label smoothing
            assert not flags["expressible"] and "smoothing" in flags["note"]
            assert abs(_via_kddoctor(s, t, y, flags) - want) > 1e-4
        else:
            assert flags["expressible"]
            _close(_via_kddoctor(s, t, y, flags), want)


def test_timm_defaults_follow_train_py(logits):
    s, t, y = logits
    assert TIMM.kddoctor_flags()["expressible"] is False  # smoothing 0.1 by default
    _close(TIMM.loss(s, t, y), TIMM.loss(s, t, y, temperature=4.0, smoothing=0.1))


# --- RepDistiller --------------------------------------------------------------------------------


def test_repdistiller_loss_matches_formula_and_kddoctor(logits):
    s, t, y = logits
    for temp, (g, a, b) in itertools.product(
        TEMPS, [(0.1, 0.9, 0.0), (1.0, 0.9, 0.0), (1.0, 1.0, 0.8), (0, 1, 0)]
    ):
        kw = {"gamma": g, "alpha": a, "beta": b, "temperature": temp}
        want = g * _ce(s, y) + a * temp**2 * _kl_total(s, t, temp) / len(s)  # beta weighs a zero term
        _close(REPDISTILLER.loss(s, t, y, **kw), want)
        flags = REPDISTILLER.kddoctor_flags(**kw)
        conv = flags["convention"]
        assert flags["expressible"] and (conv.preset, conv.ce_weight, conv.kd_weight) == (
            "repdistiller",
            g,
            a,
        )
        _close(_via_kddoctor(s, t, y, flags), want)
    assert (
        "--ce-weight 1 --kd-weight 0.9" in REPDISTILLER.kddoctor_flags(gamma=1.0, alpha=0.9, beta=0.0)["note"]
    )


@pytest.mark.parametrize("kw", [{"alpha": 0.9}, {"beta": 0.0}, {}])
def test_repdistiller_needs_alpha_and_beta(logits, kw):
    s, t, y = logits
    with pytest.raises(TypeError):
        REPDISTILLER.loss(s, t, y, **kw)
    with pytest.raises(TypeError):
        REPDISTILLER.kddoctor_flags(**kw)


# --- checkpoints ---------------------------------------------------------------------------------


def _model_sd(seed):
    torch.manual_seed(seed)
    m = student_cnn(num_classes=10)
    for name, buf in m.named_buffers():  # non-trivial BatchNorm statistics
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + (0.5 if "var" in name else 0.0))
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def sd():
    return _model_sd(0)


@pytest.fixture(scope="module")
def teacher_sd():
    return _model_sd(1)


def _raw(path):
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _roundtrip(path, want, role="student", ema=False):
    """kddoctor's loader (weights_only) + prefix selection into a fresh model gives back `want` exactly."""
    loaded = load_state_dict(path, role=role, ema=ema)
    model = student_cnn(num_classes=10)
    fit_state_dict(model, loaded, role=role, source=str(path))
    got = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_torchdistill_checkpoint(tmp_path, sd):
    args = argparse.Namespace(config="configs/sample/kd.yaml", device="cuda", start_epoch=0, seed=None)
    (p,) = TORCHDISTILL.save(sd, tmp_path / "kd.pt", epoch=7, args=args, metric=71.5)
    obj = _raw(p)
    assert list(obj) == ["model", "optimizer", "best_value", "lr_scheduler", "args"]  # no epoch
    assert obj["args"] == args and obj["best_value"] == 71.5
    assert isinstance(obj["lr_scheduler"]["milestones"], collections.Counter)
    assert obj["optimizer"]["state"] and "momentum_buffer" in obj["optimizer"]["state"][0]
    _roundtrip(p, sd)


def test_mdistiller_checkpoints(tmp_path, sd, teacher_sd):
    best, student_best = MDISTILLER.save(
        sd, tmp_path / "best", epoch=240, teacher_state=teacher_sd, metric=75.0
    )
    assert student_best.name == "student_best"
    obj = _raw(best)
    assert list(obj) == ["epoch", "model", "optimizer", "best_acc"] and obj["epoch"] == 240
    assert obj["best_acc"].ndim == 0 and obj["best_acc"].item() == 75.0
    assert {k.split(".")[1] for k in obj["model"]} == {"student", "teacher"}
    assert all(k.startswith("module.") for k in obj["model"])
    assert list(_raw(student_best)) == ["model"]
    _roundtrip(best, sd)
    _roundtrip(best, teacher_sd, role="teacher")
    _roundtrip(student_best, sd)
    paths = MDISTILLER.save(sd, tmp_path / "epoch_40", epoch=40, teacher_state=teacher_sd)
    assert [q.name for q in paths] == ["epoch_40", "student_40"]
    with pytest.raises(ValueError, match="teacher_state"):
        MDISTILLER.save(sd, tmp_path / "latest", epoch=1)


def test_timm_checkpoint(tmp_path, sd, teacher_sd):
    opt = torch.optim.AdamW(student_cnn(num_classes=10).parameters())
    args = argparse.Namespace(
        model="student_cnn", kd_model_name="resnet50", kd_temperature=4.0, smoothing=0.1
    )
    extras = {"optimizer_state": opt.state_dict(), "args": args, "ema_state": teacher_sd, "metric": 80.25}
    (p,) = TIMM.save(sd, tmp_path / "last.pth.tar", epoch=9, **extras)
    obj = _raw(p)
    assert list(obj) == [
        "epoch",
        "arch",
        "optimizer",
        "version",
        "args",
        "state_dict",
        "state_dict_ema",
        "metric",
    ]
    assert obj["arch"] == "student_cnn" and obj["version"] == 2 and obj["args"] == args
    assert obj["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    _roundtrip(p, sd)
    _roundtrip(p, teacher_sd, ema=True)
    (q,) = TIMM.save(sd, tmp_path / "bare.pth.tar", epoch=0)
    assert list(_raw(q)) == ["epoch", "arch", "optimizer", "version", "state_dict"]
    _roundtrip(q, sd)


@pytest.mark.parametrize(
    "name,keys",
    [
        ("resnet8x4_best.pth", ["epoch", "model", "best_acc"]),
        ("ckpt_epoch_40.pth", ["epoch", "model", "accuracy"]),
        ("resnet8x4_last.pth", ["opt", "model"]),
    ],
)
def test_repdistiller_checkpoints(tmp_path, sd, name, keys):
    opt = argparse.Namespace(
        distill="kd", gamma=0.1, alpha=0.9, beta=0.0, kd_T=4.0, lr_decay_epochs=[150, 180]
    )
    (p,) = REPDISTILLER.save(sd, tmp_path / name, epoch=40, args=opt, metric=73.0)
    obj = _raw(p)
    assert list(obj) == keys
    if "opt" in obj:
        assert obj["opt"] == opt
    else:
        assert obj[keys[-1]].ndim == 0 and obj["epoch"] == 40
    _roundtrip(p, sd)


@pytest.mark.parametrize("fw", list(FRAMEWORKS.values()), ids=list(FRAMEWORKS))
def test_save_rejects_unknown_extras_and_citation_names_commit_and_lines(tmp_path, sd, fw):
    with pytest.raises(TypeError):
        fw.save(sd, tmp_path / "x.pth", epoch=1, teacher_state=sd, optimizer=None)
    assert re.search(r"@[0-9a-f]{40}: loss ", fw.citation)
    assert len(re.findall(r"\.py:\d+", fw.citation)) >= 2
