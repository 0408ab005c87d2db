"""Gate policies: every rule's pass and fail, exit codes, JUnit, step summary, baseline regression."""

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kddoctor.cli import app
from kddoctor.errors import UserError
from kddoctor.gate import METRIC_RULES, evaluate, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def results(**over) -> dict:
    m = {
        "train": {
            "teacher": {"loss": 0.01, "acc": 1.0, "ece": 0.01},
            "student": {"loss": 0.05, "acc": 0.98, "ece": 0.02},
            "agreement": 0.98,
            "kl": 0.05,
        },
        "val": {
            "teacher": {"loss": 0.05, "acc": 0.97, "ece": 0.02},
            "student": {"loss": 0.2, "acc": 0.94, "ece": 0.04},
            "agreement": 0.95,
            "kl": 0.12,
        },
    }
    doc = {
        "schema": "kddoctor/results/v1",
        "run": {"teacher": "t", "student": "s", "convention": "c"},
        "metrics": m,
        "checks": [
            {"id": "preprocessing_parity", "status": "pass", "summary": "ok", "evidence": {}},
            {"id": "mode_parity", "status": "fail", "summary": "bn", "evidence": {}},
        ],
        "causes": [
            {"id": "overfitting", "score": 0.7, "likely": True, "evidence": [], "remedies": ["r"]},
            {"id": "alpha_imbalance", "score": 0.1, "likely": False, "evidence": [], "remedies": ["r"]},
        ],
        "gate": {"passed": True, "failures": []},
    }
    for path, value in over.items():
        *keys, last = path.split("__")
        d = doc
        for k in keys:
            d = d[k]
        d[last] = value
    return doc


# rule -> (threshold that holds, threshold that fails) on results()
CASES = {
    "min_val_agreement": (0.95, 0.96),
    "max_agreement_gap": (0.03, 0.02),
    "max_val_kl": (0.12, 0.11),
    "max_student_val_ece": (0.04, 0.03),
    "min_student_val_acc": (0.94, 0.95),
    "max_val_acc_drop": (0.03, 0.02),
    "max_student_val_loss": (0.2, 0.19),
    "max_val_agreement_regression": (0.02, 0.005),
    "max_student_val_acc_regression": (0.02, 0.005),
}


def test_every_rule_has_a_case():
    assert set(CASES) == set(METRIC_RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_passes_and_fails(rule):
    ok, bad = CASES[rule]
    baseline = results(metrics__val__agreement=0.96, metrics__val__student__acc=0.95)
    passed = evaluate(results(), parse_policy(f"[gate]\n{rule} = {ok}\n"), baseline)
    failed = evaluate(results(), parse_policy(f"[gate]\n{rule} = {bad}\n"), baseline)
    assert passed["passed"] and not passed["failures"]
    assert not failed["passed"] and failed["failures"][0]["rule"] == rule
    assert failed["failures"][0]["threshold"] == bad


def test_fail_on_likely_and_fail_on_check():
    assert not evaluate(results(), parse_policy('[gate]\nfail_on_likely = ["overfitting"]'))["passed"]
    assert evaluate(results(), parse_policy('[gate]\nfail_on_likely = ["alpha_imbalance"]'))["passed"]
    assert not evaluate(results(), parse_policy('[gate]\nfail_on_check = ["mode_parity"]'))["passed"]
    assert evaluate(results(), parse_policy('[gate]\nfail_on_check = ["preprocessing_parity"]'))["passed"]
    # a policy shared by both tasks: a check the run's task does not have holds, and says why
    g = evaluate(results(), parse_policy('[gate]\nfail_on_check = ["lm_alignment"]'))
    assert g["passed"] and g["rules"][0]["value"] == "not run for this task"


def test_warn_rules_warn_unless_fail_on_warn():
    v = evaluate(results(), parse_policy("[gate]\n[warn]\nmin_val_agreement = 0.99\n"))
    assert v["passed"] and v["warnings"][0]["rule"] == "min_val_agreement"
    v = evaluate(results(), parse_policy("[gate]\nfail_on_warn = true\n[warn]\nmin_val_agreement = 0.99\n"))
    assert not v["passed"] and v["failures"][0]["level"] == "warn"


@pytest.mark.parametrize(
    "text,match",
    [
        ("[gate]\nmin_val_agreemnt = 0.9", "unknown key 'min_val_agreemnt'"),
        ('[gate]\nmin_val_agreement = "high"', "must be a number"),
        ("[gate]\nmin_val_agreement = true", "must be a number"),
        ('[gate]\nfail_on_likely = "overfitting"', "must be a list of strings"),
        ('[gate]\nfail_on_likely = ["overfit"]', "unknown id"),
        ("[gate]\nfail_on_warn = 1", "must be true or false"),
        ("[gates]\nmin_val_agreement = 0.9", "unknown table"),
        ("[warn]\nmin_val_agreement = 0.9", "no \\[gate\\] table"),
        ("[gate]\nmin_val_agreement = ", "not valid TOML"),
        ('[gate]\n[warn]\nfail_on_likely = ["overfitting"]', "unknown key"),
    ],
)
def test_malformed_policies(text, match):
    with pytest.raises(UserError, match=match):
        parse_policy(text)


@pytest.mark.parametrize("name", ["default", "strict", "example", "lm"])
def test_shipped_policies_are_valid(name):
    assert load_policy(ROOT / "checks" / f"{name}.toml").name.endswith(f"{name}.toml")


@pytest.fixture
def results_file(tmp_path):
    p = tmp_path / "results.json"
    p.write_text(json.dumps(results()))
    return p


def test_cli_exit_codes(results_file, tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text("[gate]\nmin_val_agreement = 0.9\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nmin_val_agreement = 0.99\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[gate]\nnope = 1\n")
    assert runner.invoke(app, ["gate", str(results_file), "--policy", str(ok)]).exit_code == 0
    assert runner.invoke(app, ["gate", str(results_file), "--policy", str(bad)]).exit_code == 1
    res = runner.invoke(app, ["gate", str(results_file), "--policy", str(broken)])
    assert res.exit_code == 2 and "unknown key 'nope'" in res.stderr
    res = runner.invoke(app, ["gate", str(tmp_path / "none.json"), "--policy", str(ok)])
    assert res.exit_code == 2 and "not found" in res.stderr
    (tmp_path / "x.json").write_text('{"schema": "other"}')
    assert runner.invoke(app, ["gate", str(tmp_path / "x.json"), "--policy", str(ok)]).exit_code == 2
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["gate", str(tmp_path / "empty"), "--policy", str(ok)])
    assert res.exit_code == 2 and "is a directory without a results.json" in res.stderr
    # a diagnose --out directory: its results.json
    assert runner.invoke(app, ["gate", str(results_file.parent), "--policy", str(bad)]).exit_code == 1


def test_junit_has_real_failures(results_file, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text("[gate]\nmin_val_agreement = 0.99\nmax_val_kl = 0.5\n[warn]\nmax_agreement_gap = 0.01\n")
    junit = tmp_path / "out" / "gate.xml"
    assert (
        runner.invoke(app, ["gate", str(results_file), "--policy", str(pol), "--junit", str(junit)]).exit_code
        == 1
    )
    root = ET.parse(junit).getroot()
    gate = root.find("testsuite[@name='kddoctor.gate']")
    cases = {c.get("name"): c for c in gate.findall("testcase")}
    assert set(cases) == {"min_val_agreement", "max_val_kl", "max_agreement_gap"}
    assert cases["min_val_agreement"].find("failure") is not None
    assert cases["max_val_kl"].find("failure") is None and cases["max_agreement_gap"].find("failure") is None
    assert gate.get("failures") == "1"
    checks = {c.get("name"): c for c in root.find("testsuite[@name='kddoctor.checks']").findall("testcase")}
    assert (
        checks["mode_parity"].find("failure") is not None
        and checks["preprocessing_parity"].find("failure") is None
    )


def test_github_summary_and_annotations(results_file, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    pol = tmp_path / "p.toml"
    pol.write_text("[gate]\nmin_val_agreement = 0.99\n[warn]\nmax_val_kl = 0.01\n")
    res = runner.invoke(app, ["gate", str(results_file), "--policy", str(pol), "--quiet"])
    assert res.exit_code == 1
    assert "::error title=kddoctor gate::min_val_agreement" in res.stdout
    assert "::warning title=kddoctor gate::max_val_kl" in res.stdout
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "## kddoctor" in text and "FAILED" in text


def test_baseline_regression(results_file, tmp_path):
    base = copy.deepcopy(results())
    base["metrics"]["val"]["agreement"] = 0.99
    bpath = tmp_path / "base.json"
    bpath.write_text(json.dumps(base))
    pol = tmp_path / "p.toml"
    pol.write_text("[gate]\nmax_val_agreement_regression = 0.03\n")
    res = runner.invoke(app, ["gate", str(results_file), "--policy", str(pol), "--baseline", str(bpath)])
    assert res.exit_code == 1 and "max_val_agreement_regression" in res.stdout
    base["metrics"]["val"]["agreement"] = 0.96
    bpath.write_text(json.dumps(base))
    assert (
        runner.invoke(
            app, ["gate", str(results_file), "--policy", str(pol), "--baseline", str(bpath)]
        ).exit_code
        == 0
    )
    # without --baseline the regression rules are not applied
    assert runner.invoke(app, ["gate", str(results_file), "--policy", str(pol)]).exit_code == 0


def test_diagnose_with_policy_records_the_gate(demo_paths, tmp_path):
    from kddoctor.zoo.demo import demo_command

    out = tmp_path / "run"
    junit = tmp_path / "j.xml"
    res = runner.invoke(
        app,
        [
            "diagnose",
            *demo_command(*demo_paths),
            "--quick",
            "--quiet",
            "--out",
            str(out),
            "--policy",
            str(ROOT / "checks" / "strict.toml"),
            "--junit",
            str(junit),
        ],
    )
    assert res.exit_code == 1
    gate = json.loads((out / "results.json").read_text())["gate"]
    assert gate["passed"] is False and gate["failures"]
    assert {"rule", "value", "threshold"} <= set(gate["failures"][0])
    assert ET.parse(junit).getroot().find("testsuite[@name='kddoctor.gate']") is not None
    res = runner.invoke(
        app,
        [
            "diagnose",
            *demo_command(*demo_paths),
            "--quick",
            "--quiet",
            "--out",
            str(out),
            "--policy",
            str(ROOT / "checks" / "default.toml"),
        ],
    )
    assert res.exit_code == 0
    # --baseline alone gates on its regression rules (it was read only beside a policy, else ignored)
    base = json.loads((out / "results.json").read_text())
    base["metrics"]["val"]["agreement"] += 0.05
    (tmp_path / "base.json").write_text(json.dumps(base))
    args = ["diagnose", *demo_command(*demo_paths), "--quick", "--quiet", "--out", str(tmp_path / "b")]
    res = runner.invoke(app, [*args, "--baseline", str(tmp_path / "base.json")])
    gate = json.loads((tmp_path / "b" / "results.json").read_text())["gate"]
    assert res.exit_code == 1 and [f["rule"] for f in gate["failures"]] == ["max_val_agreement_regression"]


def strict_warn_only_doc() -> dict:
    """Every fail-level rule of checks/strict.toml holds; its two [warn] rules break."""
    doc = results(
        metrics__train__agreement=0.98,
        metrics__val__agreement=0.975,  # >= 0.97 (gate) but < 0.98 (warn)
        metrics__val__kl=0.08,  # <= 0.10 (gate) but > 0.05 (warn)
        metrics__val__student__acc=0.96,
    )
    doc["checks"][1]["status"] = "pass"
    doc["causes"][0].update(score=0.2, likely=False)
    return doc


def test_fail_on_warn_failures_are_named_everywhere(tmp_path):
    from rich.console import Console

    from kddoctor.report.terminal import render_summary

    strict = ROOT / "checks" / "strict.toml"
    doc = strict_warn_only_doc()
    verdict = evaluate(doc, load_policy(strict))
    assert not verdict["passed"]
    assert sorted(f["rule"] for f in verdict["failures"]) == ["max_val_kl", "min_val_agreement"]
    p, junit = tmp_path / "results.json", tmp_path / "gate.xml"
    p.write_text(json.dumps(doc))
    res = runner.invoke(app, ["gate", str(p), "--policy", str(strict), "--junit", str(junit)])
    assert res.exit_code == 1
    failed = [ln for ln in res.stdout.splitlines() if ln.startswith("✗")]
    assert [ln.split()[1] for ln in failed] == ["min_val_agreement", "max_val_kl"], res.stdout
    assert all("fail_on_warn" in ln for ln in failed)
    verdict_line = res.stdout.strip().splitlines()[-1]
    assert "FAILED" in verdict_line and "min_val_agreement" in verdict_line and "max_val_kl" in verdict_line
    suite = ET.parse(junit).getroot().find("testsuite[@name='kddoctor.gate']")
    assert suite.get("failures") == "2" and len(suite.findall("testcase/failure")) == 2
    assert {c.get("classname") for c in suite.findall("testcase[failure]")} == {"kddoctor.gate.warn"}
    con = Console(record=True, width=200)
    run = {**doc["run"], "device": "cpu", "n": {"train": 10, "val": 10}}
    render_summary({**doc, "run": run, "gate": verdict}, con)
    text = con.export_text()
    assert "FAILED" in text and "✗ min_val_agreement" in text and "✗ max_val_kl" in text


def _drop(doc, path):
    *keys, last = path.split(".")
    for k in keys:
        doc = doc[int(k)] if isinstance(doc, list) else doc[k]
    del doc[last]


@pytest.mark.parametrize(
    "edit,where",
    [
        (lambda d: _drop(d, "causes"), "causes"),
        (lambda d: _drop(d, "checks"), "checks"),
        (lambda d: d["metrics"]["val"]["student"].update(acc="high"), "metrics.val.student.acc"),
        (lambda d: d["metrics"]["train"].update(agreement=True), "metrics.train.agreement"),
        (lambda d: _drop(d, "metrics.val.teacher.loss"), "metrics.val.teacher.loss"),
        (lambda d: d["metrics"]["val"].update(agreement=None), "metrics.val.agreement"),
        (lambda d: d["causes"][1].pop("score"), "causes[1].score"),
        (lambda d: d["causes"][0].update(likely="yes"), "causes[0].likely"),
        (lambda d: d["causes"][0].update(remedies="r"), "causes[0].remedies"),
        (lambda d: d["checks"][0].update(status="fine"), "checks[0].status"),
        (lambda d: d["checks"][1].update(evidence=[]), "checks[1].evidence"),
        (lambda d: d.update(checks={}), "checks"),
        (lambda d: d.update(gate="yes"), "gate"),
        (lambda d: d.update(run=[]), "run"),
        (lambda d: d.update(metrics={"train": {}}), "metrics.train.teacher"),
    ],
)
def test_malformed_results_are_one_line_before_any_verdict(tmp_path, edit, where):
    doc = results()
    edit(doc)
    p, pol = tmp_path / "results.json", tmp_path / "p.toml"
    p.write_text(json.dumps(doc))
    pol.write_text('[gate]\nmin_val_agreement = 0.9\nfail_on_likely = ["overfitting"]\n')
    res = runner.invoke(app, ["gate", str(p), "--policy", str(pol)])
    assert res.exit_code == 2 and res.stdout == "", res.stdout
    assert res.stderr.count("\n") == 1 and f"{p}: {where} " in res.stderr, res.stderr


def test_null_ece_and_kl_are_allowed_but_fail_their_rules(tmp_path):
    doc = results()
    doc["metrics"]["val"]["kl"] = None
    p, pol = tmp_path / "results.json", tmp_path / "p.toml"
    p.write_text(json.dumps(doc))
    pol.write_text("[gate]\nmax_val_kl = 0.5\nmin_val_agreement = 0.9\n")
    res = runner.invoke(app, ["gate", str(p), "--policy", str(pol)])
    assert res.exit_code == 1 and "✗ max_val_kl" in res.stdout, res.output


def test_junit_that_cannot_be_written_names_junit(results_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    pol = tmp_path / "p.toml"
    pol.write_text("[gate]\nmin_val_agreement = 0.9\n")
    for junit in (blocker / "gate.xml", tmp_path):
        res = runner.invoke(app, ["gate", str(results_file), "--policy", str(pol), "--junit", str(junit)])
        assert res.exit_code == 2 and "--junit" in res.stderr and "--out" not in res.stderr, res.stderr
        assert res.stdout == ""  # refused before the verdict


def test_an_unexplained_gap_fails_when_asked_and_names_the_lead():
    from kddoctor.gate import evaluate, parse_policy

    doc = {
        "causes": [{"id": "optimization", "score": 0.4, "raw_score": 0.4, "likely": False}],
        "checks": [],
        "verdict": {"kind": "unexplained_gap", "lead": "optimization"},
        "metrics": {},
    }
    pol = parse_policy("[gate]\nfail_on_unexplained_gap = true\n", "p.toml")
    v = evaluate(doc, pol)
    assert not v["passed"] and v["failures"][0]["rule"] == "fail_on_unexplained_gap"
    assert "optimization 0.40" in v["failures"][0]["value"]
    doc["verdict"] = {"kind": "healthy", "lead": None}
    assert evaluate(doc, pol)["passed"]
    assert evaluate(doc | {"verdict": {"kind": "unexplained_gap", "lead": "x"}}, parse_policy("[gate]\n"))[
        "passed"
    ]
