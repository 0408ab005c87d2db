"""The sampled train side: it agrees with the full split within its intervals, it ignores loader
order, a small split is read whole, and probes stop at their time budget and say so."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from kddoctor.api import diagnose
from kddoctor.checks.base import Status
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios


def _pair(name: str):
    if name == "demo":
        t_path, s_path = demo.build_demo_pair()
        teacher, student = demo.teacher_cnn(), demo.student_cnn()
        teacher.load_state_dict(torch.load(t_path, weights_only=True)["state_dict"])
        student.load_state_dict(torch.load(s_path, weights_only=True)["model"])
        return teacher.eval(), student.eval(), demo.digits_loaders()
    return scenarios.pair(name)


@pytest.mark.parametrize("name", ["demo", "capacity_tiny_cnn_severe", "mismatch_val_input_mild"])
def test_sampled_train_metrics_agree_with_the_full_split(name):
    teacher, student, data = _pair(name)
    run = lambda n: diagnose(teacher, student, data["train"], data["val"], train_samples=n, checks=[])  # noqa: E731
    full, sample = run(None), run(300)
    if full.run["n"]["train"] <= 300:
        pytest.skip("the split is no larger than the sample")
    assert sample.run["n"]["train"] == 300 and any("300" in n and "stratified" in n for n in sample.notes)
    for key, (lo, hi) in sample.metrics["train"]["ci95"].items():
        value = {"teacher_acc": ("teacher", "acc"), "student_acc": ("student", "acc")}.get(key)
        truth = full.metrics["train"][value[0]][value[1]] if value else full.metrics["train"][key]
        assert lo <= truth <= hi, (key, truth, lo, hi)
    assert sample.metrics["val"] == full.metrics["val"]  # val stays complete


def test_the_default_reads_a_small_split_whole():
    teacher, student, data = _pair("demo")
    d = diagnose(teacher, student, data["train"], data["val"], checks=[])
    assert d.run["n"]["train"] == len(data["train"].dataset)
    assert not any(n.startswith("train:") for n in d.notes)


def test_the_sample_does_not_depend_on_loader_order():
    teacher, student, data = _pair("demo")
    ds = data["train"].dataset
    results = []
    for shuffle in (False, True):
        loader = DataLoader(ds, batch_size=64, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
        results.append(diagnose(teacher, student, loader, data["val"], train_samples=400, checks=[]))
    assert results[0].metrics["train"] == results[1].metrics["train"]
    batches = list(DataLoader(ds, batch_size=64))  # a plain list of batches: the key-filtered path
    orders = (batches, batches[::-1])
    runs = [diagnose(teacher, student, b, data["val"], train_samples=400, checks=[]) for b in orders]
    assert runs[0].metrics["train"] == runs[1].metrics["train"] and runs[0].run["n"]["train"] == 400


def test_a_one_shot_stream_is_read_whole_by_default_and_said_when_cut():
    teacher, student, data = _pair("demo")
    batches = list(data["train"])
    whole = diagnose(teacher, student, iter(batches), data["val"], checks=[])
    assert whole.run["n"]["train"] == sum(len(b[0]) for b in batches)
    cut = diagnose(teacher, student, iter(batches), data["val"], train_samples=100, checks=[])
    assert cut.run["n"]["train"] == 100 and any("first 100" in n for n in cut.notes)


def test_probes_stop_at_their_time_budget_and_say_so():
    from kddoctor.config import Budgets, DiagnoseConfig

    teacher, student, data = _pair("demo")
    checks = ["capacity_probe", "alpha_sensitivity", "mode_parity"]
    budgets = Budgets.quick()
    budgets.probe_seconds = 1e-6
    cfg = DiagnoseConfig(quick=True, budgets=budgets)
    cut = diagnose(teacher, student, data["train"], data["val"], checks=checks, config=cfg)
    fit = cut.finding("capacity_probe").evidence
    assert fit["fit_stopped_by"] == "time" and fit["fit_steps_done"] == 1
    assert "stopped by its time budget" in cut.finding("capacity_probe").summary
    sweep = cut.finding("alpha_sensitivity").evidence
    assert sweep["sweep_stopped_by"] == "time" and sweep["sweep_steps"] == 1
    assert cut.finding("mode_parity").evidence["bn_batches_done"] == 1
    free = diagnose(teacher, student, data["train"], data["val"], checks=checks, quick=True)
    fit = free.finding("capacity_probe").evidence
    assert fit["fit_stopped_by"] == "steps" and fit["fit_steps_done"] == fit["fit_steps"]
    assert free.finding("alpha_sensitivity").evidence["sweep_stopped_by"] == "steps"
    assert all(f.status is not Status.ERROR for f in cut.checks + free.checks)


def test_the_probe_budget_scales_with_the_main_pass():
    from kddoctor.config import Budgets

    b = Budgets()
    assert b.probe_budget(1.0) == b.probe_floor_s  # a fast pass: the floor
    assert b.probe_budget(1000.0) == pytest.approx(100.0)  # a slow device probes for longer
    b.probe_seconds = 2.0
    assert b.probe_budget(1000.0) == 2.0
    assert Budgets.quick().probe_budget(1000.0) is None  # --quick: the step budgets alone
