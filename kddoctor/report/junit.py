"""JUnit XML: one test case per gate rule and per check; a failed rule is a real <failure>."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def render_junit(results: dict, gate: dict | None) -> str:
    root = ET.Element("testsuites", name="kddoctor")
    if gate is not None:
        rules = gate.get("rules", [])
        suite = ET.SubElement(
            root,
            "testsuite",
            name="kddoctor.gate",
            tests=str(len(rules)),
            failures=str(sum(1 for r in rules if not r["ok"] and r["level"] == "fail")),
        )
        for r in rules:
            case = ET.SubElement(suite, "testcase", classname="kddoctor.gate", name=r["rule"])
            msg = f"{r['what']}: {r['value']} vs threshold {r['threshold']}"
            if not r["ok"] and r["level"] == "fail":
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
