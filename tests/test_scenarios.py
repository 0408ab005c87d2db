"""The zoo (tuning draw, test budgets): every planted pathology is named, doses order their scores,
mixtures put both causes on top, healthy and fixed pairs stay calm, and each fix closes its gap."""

import pytest

from kddoctor.causes import CAUSE_IDS
from kddoctor.zoo import images as scenarios

PLANTED = [s for s in scenarios.SCENARIOS if s.causes]
SINGLE = [s for s in PLANTED if len(s.causes) == 1]
MIXTURES = [s for s in PLANTED if len(s.causes) > 1]
HEALTHY = [s for s in scenarios.SCENARIOS if not s.causes]
FIXED = [s for s in PLANTED if s.fix and s.dose != "mild"]
FAMILIES = sorted({s.family for s in SINGLE if s.dose})
# The pairs a user reported as misdiagnosed, rebuilt on our own split, seeds and models.
ISSUE_CASES = {
    "mismatch_val_input_mild": "distribution_mismatch",  # val transform dropped the Normalize
    "undertrained_low_lr_mild": "optimization",  # learning rate 100x too small
    "healthy_augmenting_loader": None,  # augmenting train loader, no gap: no likely cause
    "mismatch_val_input_severe": "distribution_mismatch",  # val scaled /255 instead of /16
    "mismatch_norm_conflict": "distribution_mismatch",  # a 0/1 student fed normalized inputs
}


def test_zoo_shape():
    for cause in CAUSE_IDS:
        assert sum(cause in s.causes for s in SINGLE) >= 2, cause
    assert len(HEALTHY) >= 3 and len(MIXTURES) >= 2 and len(FAMILIES) >= 8
    for name, cause in ISSUE_CASES.items():
        assert scenarios.get(name).expected == cause


@pytest.mark.parametrize("scn", SINGLE, ids=lambda s: s.name)
def test_the_planted_cause_ranks_first(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    top = diag.causes[0]
    assert top["id"] == scn.expected, [(c["id"], c["score"]) for c in diag.causes]
    if scn.dose != "mild":  # a mild dose must lead; a severe or single one must also be likely
        assert top["likely"] and diag.verdict["kind"] == "likely", top


@pytest.mark.parametrize("family", FAMILIES)
def test_score_rises_with_the_dose(diagnose_scenario, family):
    mild, severe = (diagnose_scenario(f"{family}_{d}") for d in ("mild", "severe"))
    cause = scenarios.get(f"{family}_mild").expected
    score = {d.run["student"]: next(c["score"] for c in d.causes if c["id"] == cause) for d in (mild, severe)}
    assert score[f"scenario:{family}_severe"] >= score[f"scenario:{family}_mild"], score


@pytest.mark.parametrize("scn", MIXTURES, ids=lambda s: s.name)
def test_mixtures_put_both_causes_on_top(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    assert {c["id"] for c in diag.causes[:2]} == set(scn.causes), [(c["id"], c["score"]) for c in diag.causes]
    assert diag.causes[0]["likely"] and diag.causes[1]["score"] >= 0.2


@pytest.mark.parametrize("scn", HEALTHY, ids=lambda s: s.name)
def test_healthy_pairs_are_calm(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    assert not diag.likely_causes, [(c["id"], c["score"]) for c in diag.causes]
    assert diag.verdict["kind"] == "healthy", diag.verdict["sentence"]


@pytest.mark.parametrize("scn", FIXED, ids=lambda s: s.name)
def test_fixing_only_the_planted_factor_closes_the_gap(diagnose_scenario, scn):
    sick, fixed = diagnose_scenario(scn.name), diagnose_scenario(f"{scn.name}+fix")
    assert not fixed.likely_causes, [(c["id"], c["score"]) for c in fixed.causes]
    assert fixed.verdict["kind"] == "healthy", fixed.verdict["sentence"]
    v_sick, v_fix = sick.metrics["val"], fixed.metrics["val"]
    assert v_fix["agreement"] >= 0.96 and v_fix["student"]["loss"] < 0.15
    assert v_fix["student"]["loss"] < v_sick["student"]["loss"]
    teacher_collapsed = v_sick["teacher"]["acc"] < v_fix["teacher"]["acc"] - 0.10
    # (a val pipeline that breaks both models can leave them agreeing on their shared wrong answers)
    assert v_fix["kl"] < v_sick["kl"] or teacher_collapsed


@pytest.mark.parametrize("scn", PLANTED, ids=lambda s: s.name)
def test_a_sick_pair_is_never_called_fine(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    m = diag.metrics["val"]
    if m["teacher"]["acc"] - m["student"]["acc"] >= 0.03:
        assert diag.verdict["kind"] != "healthy", diag.verdict["sentence"]
