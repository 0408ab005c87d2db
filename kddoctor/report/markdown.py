"""A short Markdown summary for PR comments and $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import re

from .words import convention_sentence

# Markdown syntax, plus < > & so that no raw HTML or entity survives: `\<script\>` shows as written.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+|!<>&~])")


def md_escape(text: str) -> str:
    """Escape a user-controlled string for Markdown: a backslash before syntax, all on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def _fmt(value: float | None, spec: str) -> str:
    """A metric as text; "–" for one that could not be measured (null in results.json)."""
    return "–" if value is None else format(value, spec)


def render_markdown(diag) -> str:
    d = diag.to_dict() if hasattr(diag, "to_dict") else diag
    run, m = d["run"], d["metrics"]
    likely = [c for c in d["causes"] if c["likely"]]
    lines = ["## kddoctor", ""]
    verdict = d.get("verdict") or {}
    if verdict.get("sentence"):
        lines.append(f"**Verdict:** {md_escape(verdict['sentence'])}")
    elif likely:
        lines.append("**Verdict:** " + ", ".join(f"**{c['id']}** ({c['score']:.2f})" for c in likely))
    for note in d.get("notes") or []:
        lines.append(f"- note: {md_escape(note)}")
    gate = d.get("gate") or {}
    if gate.get("policy"):
        lines.append(f"**Gate:** {'passed' if gate['passed'] else 'FAILED'} ({md_escape(gate['policy'])})")
        for f in gate.get("failures", []):
            lines.append(f"- `{f['rule']}`: {f['value']} vs threshold {f['threshold']}")
    lines += [
        "",
        f"Teacher {md_escape(run['teacher'])} · student {md_escape(run['student'])} · "
        f"{md_escape(convention_sentence(run))}",
        "",
        "| split | teacher loss | teacher acc | student loss | student acc | agreement | KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in ("train", "val"):
        s = m[split]
        lines.append(
            f"| {split} | {s['teacher']['loss']:.3f} | {s['teacher']['acc']:.1%} | "
            f"{s['student']['loss']:.3f} | {s['student']['acc']:.1%} | {s['agreement']:.1%} | "
            f"{_fmt(s['kl'], '.3f')} |"
        )
    lines += ["", "| check | status | summary |", "|---|---|---|"]
    for c in d["checks"]:
        lines.append(f"| {c['id']} | {c['status']} | {md_escape(c['summary'])} |")
    lead = (d.get("verdict") or {}).get("lead")
    lines += ["", "| cause | score | mechanism | first remedy |", "|---|---|---|---|"]
    for c in d["causes"]:
        remedy = md_escape(c["remedies"][0]) if (c["likely"] or c["id"] == lead) and c["remedies"] else ""
        mech = md_escape(c.get("mechanism_title", ""))
        lines.append(
            f"| {'**' + c['id'] + '**' if c['likely'] else c['id']} | {c['score']:.2f} | {mech} | {remedy} |"
        )
    return "\n".join(lines) + "\n"
