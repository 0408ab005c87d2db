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


def _catalogue_signals():
    from kddoctor import causes

    cat = causes.catalogue()
    yield from ((s["check"], s["key"], "gap") for s in cat["gap"]["signals"])
    yield from ((s["check"], s["z_key"], "gap") for s in cat["gap"]["signals"])
    for cid in causes.CAUSE_IDS:
        for mech in cat[cid]["mechanisms"].values():
            for side in ("support", "against"):
                yield from ((s["check"], s["key"], cid) for s in mech.get(side, []))


def test_every_catalogue_signal_is_emitted_by_its_check(diagnose_scenario):
    """A (check, key) in causes.toml that no check emits would silently never count: it fails here."""
    diag = diagnose_scenario("healthy_cnn")
    for check, key, where in _catalogue_signals():
        f = diag.finding(check)
        assert f is not None, f"causes.toml [{where}] reads unknown check {check!r}"
        value = f.evidence.get(key)
        assert isinstance(value, int | float) and not isinstance(value, bool), (
            f"causes.toml [{where}] reads {check}.{key}, which the check does not emit as a number"
        )


def test_every_remedy_placeholder_is_provided(diagnose_scenario):
    """Rendering every remedy of every cause (whatever its `when`) against a real run's context."""
    from kddoctor import causes

    doc = diagnose_scenario("healthy_cnn").to_dict()
    ctx = causes.remedy_context(doc["checks"], doc["run"])
    ctx["applies"] = {
        r.get("when", "always") for cid in causes.CAUSE_IDS for r in causes.catalogue()[cid]["remedies"]
    }
    for cid in causes.CAUSE_IDS:
        cause = causes.catalogue()[cid]
        for mech in cause["mechanisms"]:
            assert len(causes.render_remedies(cause, mech, ctx)) == len(cause["remedies"])


@pytest.mark.parametrize("check_id", list_checks())
def test_thresholds_are_keyword_defaults_the_registry_records(diagnose_scenario, check_id):
    import inspect

    from kddoctor.checks.base import get_check

    spec = get_check(check_id)
    params = inspect.signature(spec.fn).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert defaults and dict(spec.thresholds) == defaults
    f = diagnose_scenario("healthy_cnn").finding(check_id)
    assert f.to_dict()["thresholds"] == defaults
