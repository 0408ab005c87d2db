"""Gate policies (checks/*.toml) applied to a results.json document: data in, verdict out."""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .causes import CAUSE_IDS
from .errors import UserError


def _m(d: dict, *path: str) -> float:
    for p in path:
        d = d[p]
    return math.nan if d is None else float(d)  # a metric that could not be measured fails its rule


# rule -> (description, how to read the value, comparison): value must be >= (min_) or <= (max_) threshold
METRIC_RULES = {
    "min_val_agreement": ("val top-1 agreement", lambda r, b: _m(r, "metrics", "val", "agreement")),
    "max_agreement_gap": (
        "train agreement minus val agreement",
        lambda r, b: _m(r, "metrics", "train", "agreement") - _m(r, "metrics", "val", "agreement"),
    ),
    "max_val_kl": ("val KL(teacher||student)", lambda r, b: _m(r, "metrics", "val", "kl")),
    "max_student_val_ece": ("student val ECE", lambda r, b: _m(r, "metrics", "val", "student", "ece")),
    "min_student_val_acc": ("student val accuracy", lambda r, b: _m(r, "metrics", "val", "student", "acc")),
    "max_val_acc_drop": (
        "teacher val accuracy minus student val accuracy",
        lambda r, b: _m(r, "metrics", "val", "teacher", "acc") - _m(r, "metrics", "val", "student", "acc"),
    ),
    "max_student_val_loss": ("student val loss", lambda r, b: _m(r, "metrics", "val", "student", "loss")),
    "max_val_agreement_regression": (
        "val agreement lost against the baseline run",
        lambda r, b: _m(b, "metrics", "val", "agreement") - _m(r, "metrics", "val", "agreement"),
    ),
    "max_student_val_acc_regression": (
        "student val accuracy lost against the baseline run",
        lambda r, b: _m(b, "metrics", "val", "student", "acc") - _m(r, "metrics", "val", "student", "acc"),
    ),
}
BASELINE_RULES = ("max_val_agreement_regression", "max_student_val_acc_regression")
DEFAULT_REGRESSION_MARGIN = 0.02  # used for baseline rules a policy leaves unset when --baseline is given
LIST_KEYS = {"fail_on_likely": CAUSE_IDS, "fail_on_check": None}
BOOL_KEYS = ("fail_on_warn", "fail_on_unexplained_gap")


@dataclass
class Policy:
    name: str
    fail: dict[str, float]
    warn: dict[str, float]
    fail_on_likely: list[str]
    fail_on_check: list[str]
    fail_on_warn: bool
    fail_on_unexplained_gap: bool = False  # a gap no cause explains fails, naming the strongest lead


def _validate_table(table: object, where: str, allow_lists: bool) -> dict:
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table of rules")
    out: dict = {}
    for key, value in table.items():
        if key in METRIC_RULES:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{where}.{key} must be a number, got {value!r}")
            out[key] = float(value)
        elif allow_lists and key in LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}.{key} must be a list of strings, got {value!r}")
            allowed = LIST_KEYS[key]
            if allowed is None:  # check ids of every task; an earlier release's id reads as today's
                from .checks import CHECK_ALIASES, list_checks
                from .checks.base import canonical_check_id

                allowed = tuple(list_checks(None))
                value = [canonical_check_id(v) if v in CHECK_ALIASES else v for v in value]
            bad = [v for v in value if v not in allowed]
            if bad:
                raise UserError(f"{where}.{key}: unknown id(s) {', '.join(bad)}; known: {', '.join(allowed)}")
            out[key] = list(value)
        elif allow_lists and key in BOOL_KEYS:
            if not isinstance(value, bool):
                raise UserError(f"{where}.{key} must be true or false, got {value!r}")
            out[key] = value
        else:
            known = sorted(METRIC_RULES) + (sorted(LIST_KEYS) + list(BOOL_KEYS) if allow_lists else [])
            raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
    return out


def parse_policy(text: str, name: str = "policy") -> Policy:
    """Validate a policy document; unknown keys and wrong types are errors, never ignored."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"policy {name} is not valid TOML: {e}") from e
    unknown = [k for k in doc if k not in ("gate", "warn")]
    if unknown:
        raise UserError(
            f"policy {name}: unknown table(s) {', '.join(unknown)}; use [gate] and optionally [warn]"
        )
    if "gate" not in doc:
        raise UserError(f"policy {name} has no [gate] table")
    gate = _validate_table(doc["gate"], f"{name} [gate]", allow_lists=True)
    warn = _validate_table(doc.get("warn", {}), f"{name} [warn]", allow_lists=False)
    return Policy(
        name=name,
        fail={k: v for k, v in gate.items() if k in METRIC_RULES},
        warn=warn,
        fail_on_likely=gate.get("fail_on_likely", []),
        fail_on_check=gate.get("fail_on_check", []),
        fail_on_warn=gate.get("fail_on_warn", False),
        fail_on_unexplained_gap=gate.get("fail_on_unexplained_gap", False),
    )


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--policy {p} not found; see checks/example.toml for the format")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--policy {p} cannot be read ({e})") from e
    return parse_policy(text, str(p))


SCHEMA = "kddoctor/results/v1"
STATUSES = ("pass", "warn", "fail", "skipped", "error")
_NUMBER = ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
_NUMBER_OR_NULL = ("a number or null", lambda v: v is None or _NUMBER[1](v))
_STRING = ("a string", lambda v: isinstance(v, str))
_STRINGS = ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
FIELDS = {  # what interface.md promises of results.json, checked before any rule reads it
    "model": {"loss": _NUMBER, "acc": _NUMBER, "ece": _NUMBER_OR_NULL},
    "split": {"agreement": _NUMBER, "kl": _NUMBER_OR_NULL},
    "checks": {
        "id": _STRING,
        "status": (f"one of {', '.join(STATUSES)}", lambda v: v in STATUSES),
        "summary": _STRING,
        "evidence": ("an object", lambda v: isinstance(v, dict)),
    },
    "causes": {
        "id": _STRING,
        "score": _NUMBER,
        "likely": ("true or false", lambda v: isinstance(v, bool)),
        "evidence": _STRINGS,
        "remedies": _STRINGS,
    },
}
SECTIONS = {"run": dict, "metrics": dict, "checks": list, "causes": list, "gate": dict}


def _fields_problem(obj: object, path: str, fields: dict) -> str | None:
    if not isinstance(obj, dict):
        return f"{path} must be an object"
    for key, (what, ok) in fields.items():
        if key not in obj:
            return f"{path}.{key} is missing"
        if not ok(obj[key]):
            return f"{path}.{key} must be {what}, got {obj[key]!r:.40}"
    return None


def _split_problem(metrics: dict, split: str) -> str | None:
    path = f"metrics.{split}"
    if split not in metrics:
        return f"{path} is missing"
    m = metrics[split]
    if not isinstance(m, dict):
        return f"{path} must be an object"
    for model in ("teacher", "student"):
        if model not in m:
            return f"{path}.{model} is missing"
        problem = _fields_problem(m[model], f"{path}.{model}", FIELDS["model"])
        if problem:
            return problem
    return _fields_problem(m, path, FIELDS["split"])


def schema_problem(doc: dict) -> str | None:
    """The first field of a results document that breaks the contract, as 'path problem'; None if sound."""
    for key, kind in SECTIONS.items():
        if key not in doc:
            return f"{key} is missing"
        if not isinstance(doc[key], kind):
            return f"{key} must be {'an object' if kind is dict else 'a list'}"
    for split in ("train", "val"):
        problem = _split_problem(doc["metrics"], split)
        if problem:
            return problem
    for section in ("checks", "causes"):
        for i, item in enumerate(doc[section]):
            problem = _fields_problem(item, f"{section}[{i}]", FIELDS[section])
            if problem:
                return problem
    return None


def load_results(path: str | Path, what: str = "results") -> dict:
    p = Path(path)
    if p.is_dir() and (p / "results.json").is_file():
        p = p / "results.json"  # a diagnose --out directory: its results
    if p.is_dir():
        raise UserError(f"{what} file {p} is a directory without a results.json; give the results.json file")
    if not p.is_file():
        raise UserError(f"{what} file {p} not found; run kddoctor diagnose first")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} file {p} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UserError(f"{what} file {p} is not a kddoctor results.json (schema {SCHEMA})")
    problem = schema_problem(doc)
    if problem:
        raise UserError(f"{what} file {p}: {problem}; write it again with kddoctor diagnose")
    return doc


def _compare(rule: str, value: float, threshold: float) -> bool:
    return value >= threshold - 1e-12 if rule.startswith("min_") else value <= threshold + 1e-12


def evaluate(results: dict, policy: Policy, baseline: dict | None = None) -> dict:
    """Apply a policy: returns {passed, policy, failures, warnings, rules}."""
    rules = _metric_rules(results, policy, baseline) + _cause_and_check_rules(results, policy)
    for r in rules:  # the one place that decides which broken rules fail the gate
        r["failed"] = not r["ok"] and (r["level"] == "fail" or policy.fail_on_warn)
    failures = [r for r in rules if r["failed"]]
    warnings = [r for r in rules if not r["ok"] and not r["failed"]]
    strip = lambda r: {k: r[k] for k in ("rule", "value", "threshold", "level", "what")}  # noqa: E731
    return {
        "passed": not failures,
        "policy": policy.name,
        "failures": [strip(r) for r in failures],
        "warnings": [strip(r) for r in warnings],
        "rules": rules,
    }


def _metric_rules(results: dict, policy: Policy, baseline: dict | None) -> list[dict]:
    """Threshold rules on metrics (and, with a baseline, on regressions against it)."""
    rules: list[dict] = []
    fail = dict(policy.fail)
    if baseline is not None:
        for key in BASELINE_RULES:
            fail.setdefault(key, DEFAULT_REGRESSION_MARGIN)
    for level, table in (("fail", fail), ("warn", policy.warn)):
        for rule, threshold in table.items():
            if rule in BASELINE_RULES and baseline is None:
                continue
            value = METRIC_RULES[rule][1](results, baseline)
            rules.append(
                {
                    "rule": rule,
                    "level": level,
                    "value": round(value, 6) if math.isfinite(value) else None,
                    "threshold": threshold,
                    "ok": _compare(rule, value, threshold),
                    "what": METRIC_RULES[rule][0],
                }
            )
    return rules


def _cause_and_check_rules(results: dict, policy: Policy) -> list[dict]:
    """fail_on_likely, fail_on_check and fail_on_unexplained_gap."""
    rules: list[dict] = []
    scores = {c["id"]: c for c in results.get("causes", [])}
    for cause in policy.fail_on_likely:
        c = scores.get(cause, {"score": 0.0, "likely": False})
        rules.append(
            {
                "rule": f"fail_on_likely:{cause}",
                "level": "fail",
                "value": c["score"],
                "threshold": 0.5,
                "ok": not c["likely"],
                "what": f"score of cause {cause} (likely at >= 0.5)",
            }
        )
    from .checks.base import canonical_check_id

    statuses = {canonical_check_id(c["id"]): c["status"] for c in results.get("checks", [])}
    for check in policy.fail_on_check:
        st = statuses.get(check, "not run for this task")  # every check of the run's task is listed
        rules.append(
            {
                "rule": f"fail_on_check:{check}",
                "level": "fail",
                "value": st,
                "threshold": "fail",
                "ok": st not in ("fail", "error"),
                "what": f"check {check} fails",
            }
        )
    if policy.fail_on_unexplained_gap:
        rules.append(_unexplained_gap_rule(results, scores))
    return rules


def _unexplained_gap_rule(results: dict, scores: dict) -> dict:
    """Fails when the student has a gap that no cause explains; the value names the strongest lead."""
    verdict = results.get("verdict") or {}
    kind, lead = verdict.get("kind", "missing"), verdict.get("lead")
    lead_score = scores.get(lead, {}).get("raw_score", 0.0)
    value = kind if kind != "unexplained_gap" else f"unexplained_gap (lead: {lead} {lead_score:.2f})"
    return {
        "rule": "fail_on_unexplained_gap",
        "level": "fail",
        "value": value,
        "threshold": "likely or healthy",
        "ok": kind != "unexplained_gap",
        "what": "the student has a gap to its teacher that no cause explains",
    }


def github_outputs(gate: dict, markdown: str) -> None:
    """Annotations under GitHub Actions, and the Markdown summary into $GITHUB_STEP_SUMMARY."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for f in gate["failures"]:
            print(f"::error title=kddoctor gate::{f['rule']} = {f['value']} (threshold {f['threshold']})")
        for w in gate["warnings"]:
            print(f"::warning title=kddoctor gate::{w['rule']} = {w['value']} (threshold {w['threshold']})")
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(markdown)
        except OSError:
            pass
