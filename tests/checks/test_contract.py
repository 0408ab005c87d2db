"""Every registered (task, check) pair honours the contract; the runner turns failures into findings;
every catalogue signal is emitted by its check and every remedy placeholder is provided, for both tasks."""

import functools
import json

import pytest

from kddoctor.checks import Finding, Status, list_checks
from kddoctor.checks.base import CheckSpec, all_checks, jsonable, run_check

PAIRS = [(spec.task, spec.id) for spec in all_checks()]
CATALOGUES = {"classification": "causes.toml", "causal-lm": "lm_causes.toml"}


@functools.cache
def _lm_diagnosis():
    """A bytes pair whose user states every optional fact (a top-2 target), so every LM check runs."""
    from kddoctor.zoo import lm

    return lm.run("topk_target", draw=0)


@pytest.fixture
def diagnosis(diagnose_scenario):
    """A healthy pair of a task, diagnosed once per session."""
    return lambda task: diagnose_scenario("healthy_cnn") if task == "classification" else _lm_diagnosis()


@pytest.mark.parametrize(("task", "check_id"), PAIRS)
def test_each_check_returns_a_wellformed_finding(diagnosis, task, check_id):
    diag = diagnosis(task)
    f = diag.finding(check_id)
    assert isinstance(f, Finding) and f.id == check_id
    assert isinstance(f.status, Status) and f.status in (Status.PASS, Status.WARN, Status.FAIL)
    assert isinstance(f.summary, str) and f.summary and "\n" not in f.summary
    assert f.evidence and json.dumps(jsonable(f.evidence), allow_nan=False)
    assert any(ch.isdigit() for ch in f.summary), "a summary states its numbers"


def test_the_checks_registered_per_task():
    assert list_checks() == [
        "model_identity",
        "preprocessing_parity",
        "mode_parity",
        "generalization_gap",
        "calibration",
        "capacity_probe",
        "objective_fingerprint",
        "alpha_sensitivity",
        "covariate_shift",
    ]
    shared = {"preprocessing_parity", "generalization_gap", "calibration", "capacity_probe"}
    shared |= {"objective_fingerprint", "alpha_sensitivity", "covariate_shift", "model_identity"}
    assert len(PAIRS) == len(list_checks()) + len(list_checks("causal-lm"))
    assert shared <= set(list_checks("causal-lm"))  # one id per concept, across tasks


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


def _catalogue_signals(name: str):
    from kddoctor import causes

    cat = causes.catalogue(name)
    yield from ((s["check"], s["key"], "gap") for s in cat["gap"]["signals"])
    yield from ((s["check"], s["z_key"], "gap") for s in cat["gap"]["signals"])
    for cid in causes.CAUSE_IDS:
        for mech in cat[cid]["mechanisms"].values():
            for side in ("support", "against"):
                yield from ((s["check"], s["key"], cid) for s in mech.get(side, []))


@functools.cache
def _lm_reverse_kl_diagnosis():
    """A healthy MiniLLM-style (reverse KL) bytes pair: the keys a check files for such objectives."""
    from kddoctor.zoo import lm

    return lm.run("healthy_minillm", draw=0)


@pytest.mark.parametrize("task", list(CATALOGUES))
def test_every_catalogue_signal_is_emitted_by_its_check(diagnosis, task):
    """A (check, key) in a catalogue that no check emits would silently never count: it fails here.
    A causal-LM key may be one that a check files only for an objective other than forward KL (the
    continue gain read in the stated divergence): a reverse-KL pair's diagnosis emits those."""
    diags = [diagnosis(task)] + ([_lm_reverse_kl_diagnosis()] if task == "causal-lm" else [])
    for check, key, where in _catalogue_signals(CATALOGUES[task]):
        found = [d.finding(check) for d in diags]
        assert found[0] is not None, f"causes.toml [{where}] reads unknown check {check!r}"
        values = [f.evidence.get(key) for f in found if f is not None]
        assert any(isinstance(v, int | float) and not isinstance(v, bool) for v in values), (
            f"causes.toml [{where}] reads {check}.{key}, which the check does not emit as a number"
        )


# evidence that is a difference of two shares (accuracies, agreements): "5.3 points", never "5.3%",
# which most readers take for a relative change
POINTS = {
    "val_acc_gap",
    "excess_agreement_gap",
    "teacher_val_drop",
    "bn_recovery_acc",
    "gain_agreement",
    "continue_gain_agreement",
    "fit_plateau_shortfall",
    "fit_jump",
    "linear_probe_gap",
}


@pytest.mark.parametrize("name", list(CATALOGUES.values()))
def test_differences_of_two_shares_read_in_points(name):
    from kddoctor import causes

    cat = causes.catalogue(name)
    lines = list(cat["gap"]["signals"])
    for cid in causes.CAUSE_IDS:
        for mech in cat[cid]["mechanisms"].values():
            lines += mech.get("support", []) + mech.get("against", [])
    for s in lines:
        assert (s.get("fmt") == "pts") == (s["key"] in POINTS), (name, s["check"], s["key"], s.get("fmt"))


@pytest.mark.parametrize("task", list(CATALOGUES))
def test_every_remedy_placeholder_is_provided(diagnosis, task):
    """Rendering every remedy of every cause (whatever its `when`) against a real run's context."""
    from kddoctor import causes

    doc = diagnosis(task).to_dict()
    cat = causes.catalogue(CATALOGUES[task])
    ctx = causes.remedy_context(doc["checks"], {**doc["run"], "num_classes": doc["run"].get("vocab", 10)})
    ctx["applies"] = {r.get("when", "always") for cid in causes.CAUSE_IDS for r in cat[cid]["remedies"]}
    for cid in causes.CAUSE_IDS:
        cause = cat[cid]
        for mech in cause["mechanisms"]:
            assert len(causes.render_remedies(cause, mech, ctx)) == len(cause["remedies"])


@pytest.mark.parametrize(("task", "check_id"), PAIRS)
def test_thresholds_are_keyword_defaults_the_registry_records(diagnosis, task, check_id):
    import inspect

    from kddoctor.checks.base import get_check

    spec = get_check(check_id, task)
    params = inspect.signature(spec.fn).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert defaults and dict(spec.thresholds) == defaults
    f = diagnosis(task).finding(check_id)
    assert f.to_dict()["thresholds"] == defaults
