"""A diagnosis must not depend on accidents of the input: loader order, tiny splits, augmenting
loaders, non-finite rows, a check that breaks. Each case failed before its fix."""

import numpy as np
import pytest
import torch

from kddoctor import diagnose
from kddoctor.checks import Status
from kddoctor.checks.calibration import optimal_temperature
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios

ORDER_CASES = [
    "healthy_cnn",
    "overfit_small_subset_severe",
    "mismatch_frozen_bn_stats_severe",
    "capacity_tiny_mlp_severe",
]


def _scores(diag) -> dict:
    return {c["id"]: c["score"] for c in diag.causes}


@pytest.mark.parametrize("name", ORDER_CASES)
def test_class_sorted_and_shuffled_loaders_give_the_same_diagnosis(diagnose_scenario, name):
    shuffled = diagnose_scenario(name)
    ordered = scenarios.run(name, quick=True, data_kw={"sort_by_class": True})
    assert ordered.verdict["kind"] == shuffled.verdict["kind"]
    assert [c["id"] for c in ordered.likely_causes] == [c["id"] for c in shuffled.likely_causes]
    a, b = _scores(ordered), _scores(shuffled)
    assert all(abs(a[k] - b[k]) <= 0.05 for k in a), (a, b)
    for f_o, f_s in zip(ordered.checks, shuffled.checks, strict=True):
        assert f_o.status == f_s.status, (f_o.id, f_o.summary, f_s.summary)


def test_limit_draws_a_stratified_subset_whatever_the_order():
    teacher, student, data = scenarios.pair("healthy_cnn", sort_by_class=True)
    d = diagnose(teacher, student, data["train"], data["val"], limit=100, quick=True, checks=["calibration"])
    assert d.metrics["train"]["n"] == 100 and d.metrics["val"]["n"] == 100
    # the first 100 class-sorted digits are all zeros; a stratified subset has every class
    assert min(d.details["per_class"]["train"]["count"]) >= 8
    assert any("class-stratified" in n for n in d.notes)


def test_train_eval_is_the_train_side_and_augmentation_is_said(diagnose_scenario):
    aug = diagnose_scenario("healthy_augmenting_loader")
    assert any("augments" in n for n in aug.notes), aug.notes
    gap = aug.finding("generalization_gap").evidence
    assert gap["train_source"] == "train" and gap["train_augmented"] == 1.0
    with_eval = scenarios.run("healthy_augmenting_loader", quick=True, data_kw={"with_train_eval": True})
    gap = with_eval.finding("generalization_gap").evidence
    assert gap["train_source"] == "train_eval" and gap["train_augmented"] == 0.0
    assert with_eval.metrics["train_eval"]["agreement"] > with_eval.metrics["train"]["agreement"]
    assert gap["train_agreement"] == with_eval.metrics["train_eval"]["agreement"]
    for d in (aug, with_eval):
        assert not d.likely_causes and d.verdict["kind"] == "healthy", d.verdict
        assert d.finding("covariate_shift").status is Status.PASS


def _one_sample(loader):
    x, y = next(iter(loader))
    return [(x[:1], y[:1])]


@pytest.mark.parametrize("tiny", ["val", "train"])
def test_a_single_sample_split_gives_no_confident_verdict(tiny):
    teacher, student, data = scenarios.pair("capacity_tiny_mlp_severe")
    splits = {"train": data["train"], "val": data["val"]}
    splits[tiny] = _one_sample(splits[tiny])
    d = diagnose(teacher, student, splits["train"], splits["val"], quick=True)
    skipped = {f.id: f.summary for f in d.checks if f.status is Status.SKIPPED}
    assert {"generalization_gap", "capacity_probe", "alpha_sensitivity", "covariate_shift"} <= set(skipped)
    assert all("needs at least" in s and "has 1" in s for k, s in skipped.items()), skipped
    assert not d.likely_causes
    assert d.metrics[tiny]["ci95"]["agreement"][1] - d.metrics[tiny]["ci95"]["agreement"][0] > 0.5


def test_wilson_intervals_in_results():
    d = scenarios.run("healthy_cnn", quick=True, checks=["calibration"])
    lo, hi = d.metrics["val"]["ci95"]["student_acc"]
    assert lo < d.metrics["val"]["student"]["acc"] <= hi <= 1.0 and hi - lo < 0.05


def test_a_perfect_model_is_not_called_underconfident():
    _, teacher = demo.build_teacher()
    data = demo.digits_loaders()
    x, y = data["val"].dataset.tensors
    with torch.no_grad():
        right = teacher(x).argmax(1) == y
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[right], y[right]), batch_size=128)
    d = diagnose(teacher, teacher, data["train"], val, quick=True, checks=["calibration"])
    f = d.finding("calibration")
    assert d.metrics["val"]["student"]["acc"] == 1.0
    assert f.status is Status.PASS, f.summary
    assert not f.evidence["student_temperature_at_bound"] and f.evidence["student_opt_temperature"] > 0.3


def test_temperature_search_reports_its_bound():
    logits = np.array([[50.0, 0.0], [0.0, 50.0]] * 10)
    t, at_bound = optimal_temperature(logits, np.array([0, 1] * 10))
    assert 0.3 < t < 3 and not at_bound  # the prior holds a perfect model near T=1
    t, at_bound = optimal_temperature(np.array([[0.02, 0.0], [0.0, 0.02]] * 10), np.array([0, 1] * 10))
    assert at_bound and t < 0.1  # flat but always-right logits want T -> 0: said, not hidden


def test_the_temperature_fit_recovers_a_known_overconfidence_on_either_device_type():
    """Labels drawn from softmax(z); the model reports 2.5 z, too sharp by T = 2.5: the fit finds T near
    2.5, from torch tensors as from numpy arrays (the LM check hands it its GPU tensors)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 50, generator=g) * 2.0
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    t_torch, at_bound = optimal_temperature(2.5 * z, y)
    t_numpy, _ = optimal_temperature((2.5 * z).numpy(), y.numpy())
    assert not at_bound and abs(t_torch - 2.5) < 0.15
    assert t_torch == pytest.approx(t_numpy, abs=1e-9)


class NaNInputs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x.clone(), y
        self.x[::7] = float("nan")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_nonfinite_inputs_never_reach_the_probes():
    teacher, student, data = scenarios.pair("healthy_cnn")
    tr, va = (data[s].dataset.tensors for s in ("train", "val"))
    train = torch.utils.data.DataLoader(NaNInputs(*tr), batch_size=128)
    val = torch.utils.data.DataLoader(NaNInputs(*va), batch_size=128)
    d = diagnose(teacher, student, train, val, quick=True)
    assert d.metrics["val"]["excluded_nonfinite"] > 0
    assert all(f.status is not Status.ERROR for f in d.checks), [f.summary for f in d.checks]
    recal = d.finding("mode_parity").evidence["recalibrated"]
    assert np.isfinite(recal["loss"]) and recal["acc"] > 0.9
    assert not d.likely_causes, [(c["id"], c["score"]) for c in d.causes]


def test_a_broken_check_is_one_line_with_its_traceback_kept():
    from kddoctor.checks.base import CheckSpec, run_check

    def boom(ev):
        raise ValueError("first line\nsecond line\nthird")

    class Ev:
        capabilities = {"train", "val"}

    f = run_check(CheckSpec("boom", boom, (), "Boom", ""), Ev())
    assert f.status is Status.ERROR and "\n" not in f.summary and "second" not in f.summary
    assert "Traceback" in f.evidence["traceback"] and "third" in f.evidence["traceback"]


def test_a_gap_without_a_likely_cause_is_an_unexplained_gap():
    teacher, student, data = scenarios.pair("capacity_tiny_mlp_severe")
    # only the checks that cannot name capacity: the gap is there, no cause can be likely
    d = diagnose(teacher, student, data["train"], data["val"], quick=True, checks=["generalization_gap"])
    assert not d.likely_causes
    v = d.verdict
    assert v["kind"] == "unexplained_gap" and v["lead"] in [c["id"] for c in d.causes], v
    assert "below its teacher" in v["sentence"] and "strongest lead" in v["sentence"]


def test_the_normalization_remedy_names_the_constants_that_fix_val(diagnose_scenario):
    d = diagnose_scenario("mismatch_val_input_mild")  # val skipped Normalize(0.305, 0.376)
    remedy = next(c for c in d.causes if c["id"] == "distribution_mismatch")["remedies"][0]
    assert "Normalize(mean=[0.305], std=[0.376])" in remedy, remedy


def test_report_md_ranks_every_cause_with_the_leads_remedy(diagnose_scenario):
    from kddoctor.report import render_markdown

    md = render_markdown(diagnose_scenario("overfit_small_subset_severe"))
    assert "| cause | score | mechanism | first remedy |" in md
    assert md.count("\n| ") >= 2 + 3 + 5  # metrics, checks and all five causes
    assert "**overfitting**" in md and "Distill on more data" in md


def test_limit_on_plain_iterables_is_order_free_or_said():
    teacher, student, data = scenarios.pair("healthy_cnn")
    x, y = data["train"].dataset.tensors
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(x), 100)]
    reordered = batches[::-1]
    runs = [diagnose(teacher, student, b, b, limit=300, quick=True, checks=[]) for b in (batches, reordered)]
    a, b = (r.metrics["train"] for r in runs)
    assert a["n"] == b["n"] == 300 and a["agreement"] == pytest.approx(b["agreement"])
    assert a["student"]["loss"] == pytest.approx(b["student"]["loss"])
    assert any("smallest seeded content keys" in n for n in runs[0].notes)
    one_shot = diagnose(teacher, student, iter(batches), iter(batches), limit=150, quick=True, checks=[])
    assert one_shot.metrics["val"]["n"] == 150 and any("one-shot" in n for n in one_shot.notes)


def test_nan_graded_value_skips_the_check():
    """A check whose graded value is NaN says so and is skipped, never passed."""
    import math

    from kddoctor.checks.base import CheckSpec, Status, grade, run_check

    class _Ev:
        capabilities = {"train", "val"}

    def nan_check(ev, *, warn: float = 0.1, fail: float = 0.2):
        from kddoctor.checks.base import Finding

        return Finding("nan_check", grade(math.nan, warn, fail, what="the val gap"), "never", {})

    spec = CheckSpec("nan_check", nan_check, ("train",), "NaN", "", thresholds=(("warn", 0.1), ("fail", 0.2)))
    f = run_check(spec, _Ev())
    assert f.status is Status.SKIPPED and "the val gap could not be measured (NaN)" in f.summary
    assert f.to_dict()["thresholds"] == {"warn": 0.1, "fail": 0.2}
