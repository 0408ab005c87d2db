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
    return float(d)


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
BOOL_KEYS = ("fail_on_warn",)


@dataclass
class Policy:
    name: str
    fail: dict[str, float]
    warn: dict[str, float]
    fail_on_likely: list[str]
    fail_on_check: list[str]
    fail_on_warn: bool


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
            if allowed is None:
                from .checks import list_checks

                allowed = tuple(list_checks())
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


def load_results(path: str | Path, what: str = "results") -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {p} not found; run kddoctor diagnose first")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} file {p} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != "kddoctor/results/v1":
        raise UserError(f"{what} file {p} is not a kddoctor results.json (schema kddoctor/results/v1)")
    try:
        for split in ("train", "val"):
            _m(doc, "metrics", split, "agreement")
            _m(doc, "metrics", split, "student", "acc")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{what} file {p} lacks metrics ({e})") from e
    return doc


def _compare(rule: str, value: float, threshold: float) -> bool:
    return value >= threshold - 1e-12 if rule.startswith("min_") else value <= threshold + 1e-12


def evaluate(results: dict, policy: Policy, baseline: dict | None = None) -> dict:
    """Apply a policy: returns {passed, policy, failures, warnings, rules}."""
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
            ok = _compare(rule, value, threshold)
            rules.append(
                {
                    "rule": rule,
                    "level": level,
                    "value": round(value, 6),
                    "threshold": threshold,
                    "ok": ok,
                    "what": METRIC_RULES[rule][0],
                }
            )
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
    statuses = {c["id"]: c["status"] for c in results.get("checks", [])}
    for check in policy.fail_on_check:
        st = statuses.get(check, "missing")
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
    failures = [r for r in rules if not r["ok"] and (r["level"] == "fail" or policy.fail_on_warn)]
    warnings = [r for r in rules if not r["ok"] and r["level"] == "warn" and not policy.fail_on_warn]
    strip = lambda r: {k: r[k] for k in ("rule", "value", "threshold", "level", "what")}  # noqa: E731
    return {
        "passed": not failures,
        "policy": policy.name,
        "failures": [strip(r) for r in failures],
        "warnings": [strip(r) for r in warnings],
        "rules": rules,
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
