"""JUnit XML: one test case per gate rule and per check; a failed rule is a real <failure>."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def _failed(rule: dict) -> bool:
    """Whether a rule fails the gate (a broken warn rule does under fail_on_warn)."""
    return rule.get("failed", not rule["ok"] and rule["level"] == "fail")


def render_junit(results: dict, gate: dict | None) -> str:
    root = ET.Element("testsuites", name="kddoctor")
    if gate is not None:
        rules = gate.get("rules", [])
        suite = ET.SubElement(
            root,
            "testsuite",
            name="kddoctor.gate",
            tests=str(len(rules)),
            failures=str(sum(map(_failed, rules))),
        )
        for r in rules:
            # a rule may sit in [gate] and in [warn]: the class name tells the two cases apart
            cls = "kddoctor.gate" if r["level"] == "fail" else "kddoctor.gate.warn"
            case = ET.SubElement(suite, "testcase", classname=cls, name=r["rule"])
            msg = f"{r['what']}: {r['value']} vs threshold {r['threshold']}"
            if _failed(r):
                msg += " (warn rule, failing under fail_on_warn)" if r["level"] == "warn" else ""
                ET.SubElement(case, "failure", message=msg, type="GateRuleFailed").text = msg
            elif not r["ok"]:
                ET.SubElement(case, "system-out").text = f"warning: {msg}"
    checks = results.get("checks", [])
    suite = ET.SubElement(
        root,
        "testsuite",
        name="kddoctor.checks",
        tests=str(len(checks)),
        failures=str(sum(c["status"] == "fail" for c in checks)),
        errors=str(sum(c["status"] == "error" for c in checks)),
        skipped=str(sum(c["status"] == "skipped" for c in checks)),
    )
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname="kddoctor.checks", name=c["id"])
        if c["status"] == "fail":
            ET.SubElement(case, "failure", message=c["summary"], type="CheckFailed").text = c["summary"]
        elif c["status"] == "error":
            ET.SubElement(case, "error", message=c["summary"], type="CheckError").text = c["summary"]
        elif c["status"] == "skipped":
            ET.SubElement(case, "skipped", message=c["summary"])
        elif c["status"] == "warn":
            ET.SubElement(case, "system-out").text = f"warning: {c['summary']}"
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
