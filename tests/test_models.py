"""SPEC parsing and every checkpoint form real training scripts write."""

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from kddoctor.errors import UserError
from kddoctor.models import build_model, infer_num_classes, load_model, load_state_dict, parse_spec
from kddoctor.zoo.demo import student_cnn

SPEC = "kddoctor.zoo.demo:student_cnn"


@pytest.fixture
def sd():
    torch.manual_seed(0)
    return student_cnn(num_classes=10).state_dict()


def _same(model, sd):
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in sd.items())


def _save(tmp_path, obj, name="ckpt.pt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def test_parse_timm_spec_with_literals():
    assert parse_spec("timm:resnet18?in_chans=1&drop_rate=0.1&act_layer=gelu") == (
        "timm",
        "resnet18",
        {"in_chans": 1, "drop_rate": 0.1, "act_layer": "gelu"},
    )
    assert parse_spec("pkg.mod:fn") == ("callable", "pkg.mod:fn", {})


def test_timm_model_built_with_num_classes():
    m = build_model("timm:resnet10t?in_chans=1", 10)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_timm_arch_is_a_user_error():
    with pytest.raises(UserError, match="no architecture"):
        build_model("timm:resnet_does_not_exist", 10)


def test_file_spec_called_with_num_classes(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\ndef make(num_classes=3):\n    return torch.nn.Linear(4, num_classes)\n"
        "def plain():\n    return torch.nn.Linear(4, 5)\n"
    )
    assert build_model(f"{f}:make", 7).out_features == 7
    assert build_model(f"{f}:plain", 7).out_features == 5


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # plain state dict
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {}, "epoch": 10},
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
        lambda sd: {"student": sd, "teacher": {"x.weight": torch.zeros(1)}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DDP
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "student_key", "ddp", "compile", "ddp+compile"],
)
def test_wrappers_and_prefixes(tmp_path, sd, wrap):
    p = _save(tmp_path, wrap(sd))
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10), sd)


def test_timm_checkpoint_saver_format_with_args_namespace_and_ema(tmp_path, sd):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    args = argparse.Namespace(model="student_cnn", lr=0.1, epochs=3)
    p = _save(
        tmp_path,
        {
            "epoch": 3,
            "arch": "student_cnn",
            "state_dict": sd,
            "optimizer": {},
            "version": 2,
            "args": args,
            "metric": 91.2,
            "state_dict_ema": ema,
        },
    )
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10), sd)
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10, ema=True), ema)


def test_convnext_main_py_format(tmp_path, sd):
    p = _save(
        tmp_path,
        {
            "model": sd,
            "optimizer": {},
            "epoch": 299,
            "scaler": {},
            "args": argparse.Namespace(lr=4e-3),
            "model_ema": sd,
        },
    )
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10, ema=True), sd)


def test_torchdistill_format(tmp_path, sd):
    p = _save(
        tmp_path,
        {
            "model": sd,
            "optimizer": {},
            "lr_scheduler": {},
            "best_value": 0.9,
            "args": argparse.Namespace(config="kd.yaml"),
        },
    )
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10), sd)


def test_kd_wrapper_with_student_and_teacher_prefixes(tmp_path, sd):
    torch.manual_seed(1)
    teacher_sd = student_cnn(num_classes=10).state_dict()
    flat = {
        **{f"student.{k}": v for k, v in sd.items()},
        **{f"teacher.{k}": v for k, v in teacher_sd.items()},
    }
    p = _save(tmp_path, {"state_dict": flat})
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10), sd)
    assert _same(load_model(SPEC, str(p), role="teacher", num_classes=10), teacher_sd)


def test_safetensors(tmp_path, sd):
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    assert _same(load_model(SPEC, str(p), role="student", num_classes=10), sd)


def test_ema_is_never_chosen_silently(tmp_path, sd):
    p = _save(tmp_path, {"model_ema": sd, "epoch": 1})
    with pytest.raises(UserError, match="--student-ema"):
        load_state_dict(p, role="student")


def test_ema_flag_without_ema_weights(tmp_path, sd):
    p = _save(tmp_path, {"state_dict": sd})
    with pytest.raises(UserError, match="no EMA weights"):
        load_state_dict(p, role="teacher", ema=True)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused_and_names_the_flag(tmp_path, sd):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"state_dict": sd, "x": Evil()}, fh)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_state_dict(p, role="student")


def test_whole_pickled_module_loads_only_when_trusted(tmp_path, sd):
    model = student_cnn(num_classes=10)
    p = _save(tmp_path, model)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_state_dict(p, role="student")
    assert set(load_state_dict(p, role="student", trust=True)) == set(model.state_dict())


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path, sd):
    bad = dict(sd)
    bad["extra.weight"] = torch.zeros(3)
    del bad["features.0.weight"]
    bad["fc.weight"] = torch.zeros(5, 48)
    p = _save(tmp_path, bad)
    with pytest.raises(UserError) as e:
        load_model(SPEC, str(p), role="student", num_classes=10)
    msg = str(e.value)
    assert "1 missing (features.0.weight)" in msg and "1 unexpected (extra.weight)" in msg
    assert "fc.weight [5, 48] vs model [10, 48]" in msg and "\n" not in msg


def test_num_classes_inferred_from_classifier(sd):
    assert infer_num_classes(sd) == 10
    assert infer_num_classes(build_model("timm:resnet10t", 37).state_dict()) == 37


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_state_dict(p, role="teacher")


def test_truncated_real_checkpoint(tmp_path, sd):
    p = _save(tmp_path, sd)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_state_dict(p, role="teacher")


def test_bad_safetensors_header(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\xff" * 8 + b"{not json")
    with pytest.raises(UserError, match="not a valid .safetensors"):
        load_state_dict(p, role="student")


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_state_dict(tmp_path / "nope.pt", role="student")
    with pytest.raises(UserError, match="is a directory"):
        load_state_dict(tmp_path, role="student")


def test_torchscript_file_is_named_not_called_corrupt(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(student_cnn(num_classes=10)), str(p))
    for trust in (False, True):
        with pytest.raises(UserError, match="TorchScript") as e:
            load_state_dict(p, role="teacher", trust=trust)
        msg = str(e.value)
        assert "corrupt" not in msg and "torch.jit.load" in msg and ".py:" in msg and "\n" not in msg


MODEL_MODULE = """
import torch
class PickledNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
"""


def test_whole_module_of_an_unimportable_class_names_the_class(tmp_path, monkeypatch):
    import sys

    (tmp_path / "gone_models.py").write_text(MODEL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_models

    p = _save(tmp_path, gone_models.PickledNet(), "whole.pt")
    monkeypatch.delitem(sys.modules, "gone_models")
    (tmp_path / "gone_models.py").unlink()  # the class is no longer importable
    for trust in (False, True):
        with pytest.raises(UserError) as e:
            load_state_dict(p, role="student", trust=trust)
        msg = str(e.value)
        assert "gone_models.PickledNet" in msg and "--trust-checkpoint" in msg and "PYTHONPATH" in msg
        assert "corrupt" not in msg and "\n" not in msg


class ScoreHead(torch.nn.Module):
    """Hugging Face style: the classifier is `score`, registered before the backbone."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.score = torch.nn.Linear(16, num_classes)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())

    def forward(self, x):
        return self.score(self.backbone(x))


def test_score_head_is_the_classifier():
    from kddoctor.engine import classifier_of

    model = ScoreHead()
    assert classifier_of(model) is model.score
    sd = {"score.weight": torch.zeros(5, 16), "embed.weight": torch.zeros(100, 16)}
    assert infer_num_classes(sd) == 5


def test_num_classes_in_a_timm_spec_is_explicit(tmp_path, specs_run):
    fac = tmp_path / "fac.py"
    fac.write_text(
        "import torch\ndef make():\n    b = [(torch.zeros(2, 3, 32, 32), torch.zeros(2).long())]\n"
        "    return {'train': b, 'val': b}\n"
    )
    run = specs_run("timm:resnet10t?num_classes=5", "timm:resnet10t", data=f"{fac}:make")
    assert run["num_classes"] == 5 and run["s"].get_classifier().out_features == 5
    run = specs_run("timm:resnet10t?num_classes=5", "timm:resnet10t", data=f"{fac}:make", num_classes=5)
    assert run["num_classes"] == 5
    with pytest.raises(UserError, match="num_classes=5.*--num-classes 7|--num-classes 7.*num_classes=5"):
        specs_run("timm:resnet10t?num_classes=5", "timm:resnet10t", data=f"{fac}:make", num_classes=7)
    with pytest.raises(UserError, match="num_classes=5.*num_classes=3"):
        specs_run("timm:resnet10t?num_classes=5", "timm:resnet10t?num_classes=3", data=f"{fac}:make")
