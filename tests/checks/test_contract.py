"""Every registered check honours the contract; the runner turns failures into findings."""

import json

import pytest

from kddoctor.checks import Finding, Status, list_checks
from kddoctor.checks.base import CheckSpec, jsonable, run_check


@pytest.mark.parametrize("check_id", list_checks())
def test_each_check_returns_a_wellformed_finding(diagnose_scenario, check_id):
    diag = diagnose_scenario("healthy_cnn")
    f = diag.finding(check_id)
    assert isinstance(f, Finding) and f.id == check_id
    assert isinstance(f.status, Status) and f.status in (Status.PASS, Status.WARN, Status.FAIL)
    assert isinstance(f.summary, str) and f.summary and "\n" not in f.summary
    assert f.evidence and json.dumps(jsonable(f.evidence), allow_nan=False)
    assert any(ch.isdigit() for ch in f.summary), "a summary states its numbers"


def test_seven_checks_registered():
    assert list_checks() == [
        "preprocessing_parity",
        "mode_parity",
        "generalization_gap",
        "calibration",
        "capacity_probe",
        "alpha_sensitivity",
        "covariate_shift",
    ]


class _Ev:
    capabilities = {"train", "val"}


def test_a_raising_check_becomes_error():
    def boom(ev):
        raise RuntimeError("kaput")

    f = run_check(CheckSpec("boom", boom, ("train",), "Boom", ""), _Ev())
    assert f.status is Status.ERROR and "kaput" in f.summary


def test_missing_need_skips_with_reason():
    f = run_check(CheckSpec("needs_feats", lambda ev: None, ("features",), "x", ""), _Ev())
    assert f.status is Status.SKIPPED and "penultimate features" in f.summary
