"""The zoo: every planted scenario ranks its cause first; fixing the planted factor closes the gap."""

import pytest

from kddoctor import scenarios

PLANTED = [s for s in scenarios.SCENARIOS if s.expected]
HEALTHY = [s for s in scenarios.SCENARIOS if not s.expected]


def test_at_least_two_scenarios_per_cause():
    from kddoctor.causes import CAUSE_IDS

    for cause in CAUSE_IDS:
        assert sum(s.expected == cause for s in scenarios.SCENARIOS) >= 2, cause
    assert len(HEALTHY) >= 2


@pytest.mark.parametrize("scn", PLANTED, ids=lambda s: s.name)
def test_top_cause_is_the_planted_one(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    top = diag.causes[0]
    assert top["id"] == scn.expected, [(c["id"], c["score"]) for c in diag.causes]
    assert top["likely"], top


@pytest.mark.parametrize("scn", HEALTHY, ids=lambda s: s.name)
def test_healthy_pairs_have_no_likely_cause(diagnose_scenario, scn):
    diag = diagnose_scenario(scn.name)
    assert not diag.likely_causes, [(c["id"], c["score"]) for c in diag.causes]


@pytest.mark.parametrize("scn", PLANTED, ids=lambda s: s.name)
def test_fixing_only_the_planted_factor_closes_the_gap(diagnose_scenario, scn):
    sick, fixed = diagnose_scenario(scn.name), diagnose_scenario(f"{scn.name}+fix")
    assert not fixed.likely_causes, [(c["id"], c["score"]) for c in fixed.causes]
    v_sick, v_fix = sick.metrics["val"], fixed.metrics["val"]
    assert v_fix["agreement"] >= 0.96 and v_fix["student"]["loss"] < 0.12
    assert v_fix["student"]["loss"] < v_sick["student"]["loss"]
    assert v_fix["kl"] < v_sick["kl"]
