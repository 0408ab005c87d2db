"""Each check fails or warns on the scenario that plants its pathology and passes on healthy pairs."""

import pytest
import torch

from kddoctor import diagnose
from kddoctor.checks import Status
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios

SICK = {
    "preprocessing_parity": "mismatch_val_input_mild",
    "mode_parity": "mismatch_frozen_bn_stats_severe",
    "generalization_gap": "overfit_small_subset_severe",
    "capacity_probe": "capacity_tiny_mlp_severe",
    "alpha_sensitivity": "alpha_reduction_severe",
    "covariate_shift": "mismatch_val_input_mild",
}


@pytest.mark.parametrize("check_id,scenario", sorted(SICK.items()))
def test_check_flags_its_pathology(diagnose_scenario, check_id, scenario):
    f = diagnose_scenario(scenario).finding(check_id)
    assert f.status in (Status.FAIL, Status.WARN), f.summary


@pytest.mark.parametrize("scenario", ["healthy_cnn", "healthy_mlp"])
def test_every_check_passes_on_healthy_pairs(diagnose_scenario, scenario):
    diag = diagnose_scenario(scenario)
    bad = {f.id: f.summary for f in diag.checks if f.status not in (Status.PASS, Status.SKIPPED)}
    assert not bad


@pytest.mark.parametrize("check_id,scenario", sorted(SICK.items()))
def test_fixing_the_planted_factor_makes_the_check_pass(diagnose_scenario, check_id, scenario):
    f = diagnose_scenario(f"{scenario}+fix").finding(check_id)
    assert f.status is Status.PASS, f.summary


class Scaled(torch.nn.Module):
    """Plants overconfidence: the healthy student's logits multiplied by a factor."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


@pytest.mark.parametrize("factor,status", [(6.0, Status.FAIL), (1.0, Status.PASS)])
def test_calibration_flags_an_overconfident_student(factor, status):
    _, teacher = demo.build_teacher()
    student = scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)
    data = demo.digits_loaders()
    diag = diagnose(
        teacher, Scaled(student, factor), data["train"], data["val"], quick=True, checks=["calibration"]
    )
    f = diag.finding("calibration")
    assert f.status is status, f.summary
    if factor > 1:
        assert f.evidence["student_opt_temperature"] > 3


def test_mode_parity_sees_a_teacher_left_in_train_mode():
    """Dropout-heavy teacher: its train-mode targets differ from its eval-mode ones."""
    _, teacher = demo.build_teacher()
    noisy = demo.teacher_cnn()
    noisy.load_state_dict(teacher.state_dict())
    noisy.drop.p = 0.9
    student = scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)
    data = demo.digits_loaders()
    diag = diagnose(noisy, student, data["train"], data["val"], quick=True, checks=["mode_parity"])
    f = diag.finding("mode_parity")
    assert f.evidence["teacher_train_mode_agreement"] < 0.9 and f.status is not Status.PASS


def test_one_tensor_for_two_normalizations_fails_preprocessing_parity(diagnose_scenario):
    f = diagnose_scenario("mismatch_norm_conflict").finding("preprocessing_parity")
    assert f.status is Status.FAIL and f.evidence["norm_conflict"] == 1.0, f.summary
    assert "one input tensor cannot suit both" in f.summary
    fixed = diagnose_scenario("mismatch_norm_conflict+fix").finding("preprocessing_parity")
    assert fixed.status is Status.PASS, fixed.summary
