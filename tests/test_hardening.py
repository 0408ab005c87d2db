"""Bad input, faults and hostile files: one clear line, exit 2 (130 when interrupted), nothing lost."""

import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kddoctor import diagnose
from kddoctor._imports import split_ref
from kddoctor.cli import app
from kddoctor.data import parse_data_args
from kddoctor.errors import UserError
from kddoctor.gate import parse_policy
from kddoctor.models import parse_spec
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios
from kddoctor.zoo.demo import demo_command

runner = CliRunner()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_cli(demo_paths, out, *extra, replace=None):
    args = ["diagnose", *demo_command(*demo_paths), "--quick", "--quiet", "--out", str(out), *extra]
    for flag, value in (replace or {}).items():
        args[args.index(flag) + 1] = value
    return runner.invoke(app, args)


def assert_one_line(res, code, *needles):
    assert res.exit_code == code, res.output
    err = res.stderr
    assert err.count("\n") == 1 and err.startswith("kddoctor: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_teacher_and_student_checkpoints_disagree_on_classes(demo_paths, tmp_path):
    sd = demo.student_cnn(num_classes=5).state_dict()
    p = tmp_path / "five.pt"
    torch.save(sd, p)
    res = run_cli(demo_paths, tmp_path / "o", replace={"--student-ckpt": str(p)})
    assert_one_line(res, 2, "disagree on the class count", "teacher: 10", "student: 5", "--num-classes")


def test_labels_out_of_range(demo_paths, tmp_path):
    fac = tmp_path / "fac.py"
    fac.write_text(
        "import torch\nfrom kddoctor.zoo.demo import digits_loaders\n"
        "def make(**kw):\n    d = digits_loaders()\n"
        "    x, y = d['val'].dataset.tensors\n"
        "    ds = torch.utils.data.TensorDataset(x, y + 5)\n"
        "    return {'train': d['train'], 'val': torch.utils.data.DataLoader(ds, batch_size=64)}\n"
    )
    res = run_cli(demo_paths, tmp_path / "o", replace={"--data": f"{fac}:make"})
    assert_one_line(res, 2, "val labels lie outside [0, 10)")


def test_model_failing_on_the_data_is_one_line(demo_paths, tmp_path):
    res = run_cli(
        demo_paths,
        tmp_path / "o",
        "--num-classes",
        "10",
        replace={"--student": "timm:resnet10t", "--student-ckpt": str(demo_paths[1])},
    )
    assert res.exit_code == 2 and "does not fit the --student model" in res.stderr
    res = run_cli(demo_paths, tmp_path / "o", replace={"--student": "kddoctor.zoo.demo:student_mlp"})
    assert_one_line(res, 2, "--student-ckpt", "does not fit")


def test_prefix_hint(tmp_path):
    from kddoctor.models import load_model

    sd = {f"backbone_wrapper.{k}": v for k, v in demo.student_cnn().state_dict().items()}
    p = tmp_path / "w.pt"
    torch.save(sd, p)
    with pytest.raises(UserError, match="prefix 'backbone_wrapper.'"):
        load_model("kddoctor.zoo.demo:student_cnn", str(p), role="student", num_classes=10)


def test_out_not_writable(demo_paths, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli(demo_paths, blocker / "sub")
    assert_one_line(res, 2, "--out", "cannot be created")


def test_interrupted_run_exits_130_and_keeps_previous_report(demo_paths, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("previous")
    fac = tmp_path / "fac.py"
    fac.write_text(
        "from kddoctor.zoo.demo import digits_loaders\n"
        "def boom():\n    yield next(iter(digits_loaders()['val']))\n    raise KeyboardInterrupt\n"
        "def make(**kw):\n    d = digits_loaders()\n    return {'train': d['train'], 'val': boom()}\n"
    )
    res = run_cli(demo_paths, out, replace={"--data": f"{fac}:make"})
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert (out / "results.json").read_text() == "previous"


class NaNRows(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x).clone()
        out[:2] = float("nan")
        return out


def test_nonfinite_logits_and_inputs_are_counted_not_fatal():
    _, teacher = demo.build_teacher()
    student = scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)
    data = demo.digits_loaders(batch_size=100)
    x, y = data["val"].dataset.tensors
    x = x.clone()
    x[5, 0, 0, 0] = float("inf")
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    d = diagnose(teacher, NaNRows(student), data["train"], val, quick=True, checks=["preprocessing_parity"])
    # 2 NaN rows in each of 4 batches, plus the row whose input is inf
    assert d.metrics["val"]["excluded_nonfinite"] == 9 and d.metrics["val"]["n"] == 351
    f = d.finding("preprocessing_parity")
    assert f.status.value == "warn" and f.evidence["nonfinite_inputs"] == 1
    assert "excluded from every metric" in f.summary
    json.dumps(d.to_dict(), allow_nan=False)


def test_same_seed_same_results(demo_paths, tmp_path):
    docs = []
    for i in range(2):
        assert run_cli(demo_paths, tmp_path / str(i), "--seed", "3").exit_code == 0
        doc = json.loads((tmp_path / str(i) / "results.json").read_text())
        doc["run"].pop("seconds")
        doc["run"].pop("timings")
        docs.append(doc)
    assert docs[0] == docs[1]


ident = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=8)
junk = st.text(max_size=40)


@FUZZ
@given(st.one_of(junk, st.builds(lambda a, q: f"timm:{a}?{q}", ident, junk)))
def test_fuzz_spec_parser(spec):
    try:
        kind, ref, kwargs = parse_spec(spec)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert kind in ("timm", "callable") and isinstance(kwargs, dict)


@FUZZ
@given(junk)
def test_fuzz_factory_reference(ref):
    try:
        where, name = split_ref(ref, "data FACTORY")
    except UserError:
        return
    assert name.isidentifier() and where


@FUZZ
@given(st.lists(junk, max_size=4))
def test_fuzz_data_args(pairs):
    try:
        out = parse_data_args(pairs)
    except UserError:
        return
    assert all(k.isidentifier() for k in out)


toml_values = st.one_of(
    st.floats(allow_nan=True),
    st.integers(),
    st.booleans(),
    junk.map(json.dumps),
    st.lists(st.sampled_from(["overfitting", "x", "mode_parity"])).map(json.dumps),
)
keys = st.sampled_from(
    [
        "min_val_agreement",
        "max_val_kl",
        "fail_on_likely",
        "fail_on_check",
        "fail_on_warn",
        "bogus",
        "max_agreement_gap",
    ]
)


@FUZZ
@given(st.lists(st.tuples(keys, toml_values), max_size=5), st.sampled_from(["gate", "warn", "other"]), junk)
def test_fuzz_policy_parser(items, table, noise):
    text = f"[{table}]\n" + "\n".join(f"{k} = {v}".replace("nan", "nan") for k, v in dict(items).items())
    for doc in (text, text + noise):
        try:
            parse_policy(doc)
        except UserError as e:
            assert "\n" not in str(e).strip() or "TOML" in str(e)
