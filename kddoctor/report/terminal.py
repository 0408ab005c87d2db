"""The terminal summary: metrics, checks, and the ranked causes with their first remedy."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .words import convention_sentence, split_sizes

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim", "error": "magenta"}


VERDICT_STYLE = {"likely": "bold red", "unexplained_gap": "bold yellow", "healthy": "bold green"}


def render_verdict(d: dict, console: Console) -> None:
    """The one-line verdict (likely cause / unexplained gap with its lead / healthy), then the notes."""
    v = d.get("verdict") or {}
    if v.get("sentence"):
        head, _, rest = v["sentence"].partition(":")
        console.print(f"[{VERDICT_STYLE.get(v.get('kind'), 'bold')}]{escape(head)}:[/]{escape(rest)}")
    for note in d.get("notes") or []:
        console.print(f"[dim]note: {escape(note)}[/]")


def _teacher_dtype(run: dict) -> str:
    """', teacher in bfloat16' where a causal LM's teacher ran in another dtype than float32."""
    dtype = run.get("teacher_dtype")
    return f", teacher in {dtype}" if dtype and dtype != "float32" else ""


def render_summary(d: dict, console: Console, out_dir: str | None = None) -> None:
    """Print a results.json document as rich tables."""
    run = d["run"]
    console.print(
        f"[bold]kddoctor[/] {escape(run['student'])} [dim]distilled from[/] {escape(run['teacher'])} "
        f"[dim]on {run['device']}{_teacher_dtype(run)}, " + split_sizes(run) + "[/]"
    )
    console.print(f"[dim]{escape(convention_sentence(run))}[/]")
    console.print(_metrics_table(d["metrics"]))
    if d["checks"]:
        console.print(_checks_table(d["checks"]))
    if d["causes"]:
        console.print(_causes_table(d["causes"], (d.get("verdict") or {}).get("lead")))
        render_verdict(d, console)
    _gate_lines(d.get("gate") or {}, console)
    if out_dir:
        console.print(f"[dim]wrote {escape(str(out_dir))}/results.json, report.html, report.md[/]")


def _metrics_table(m: dict) -> Table:
    t = Table(title="Teacher vs student", title_justify="left")
    cols = ("split", "teacher loss", "teacher acc", "student loss", "student acc", "agreement", "KL(t‖s)")
    for col in cols:
        t.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "val"):
        s = m[split]
        t.add_row(
            split,
            f"{s['teacher']['loss']:.4f}",
            f"{s['teacher']['acc']:.1%}",
            f"{s['student']['loss']:.4f}",
            f"{s['student']['acc']:.1%}",
            f"{s['agreement']:.1%}",
            "–" if s["kl"] is None else f"{s['kl']:.4f}",
        )
    return t


def _checks_table(checks: list[dict]) -> Table:
    c = Table(title="Checks", title_justify="left", show_lines=False)
    c.add_column("check")
    c.add_column("status")
    c.add_column("summary", overflow="fold")
    for f in checks:
        c.add_row(f["id"], f"[{STATUS_STYLE[f['status']]}]{f['status']}[/]", escape(f["summary"]))
    return c


def _causes_table(causes: list[dict], lead: str | None) -> Table:
    """Every cause by score; the first remedy of the likely ones (or of the lead of an unexplained gap)."""
    r = Table(title="Causes, ranked", title_justify="left")
    r.add_column("cause")
    r.add_column("score", justify="right")
    r.add_column("first remedy", overflow="fold")
    for cause in causes:
        style = "bold red" if cause["likely"] else "dim"
        shown = (cause["likely"] or cause["id"] == lead) and cause["remedies"]
        r.add_row(
            f"[{style}]{cause['id']}[/]",
            f"[{style}]{cause['score']:.2f}[/]",
            escape(cause["remedies"][0]) if shown else "",
        )
    return r


def _gate_lines(gate: dict, console: Console) -> None:
    if not gate.get("policy"):
        return
    verdict = "[green]passed[/]" if gate["passed"] else "[bold red]FAILED[/]"
    console.print(f"[bold]Gate[/] {escape(gate['policy'])}: {verdict}")
    for f in gate.get("failures", []):
        why = " (warn rule, failing under fail_on_warn)" if f.get("level") == "warn" else ""
        console.print(f"  [red]✗[/] {f['rule']}: {f['value']} vs {f['threshold']}{why}")


def gate_rule_line(rule: dict) -> str:
    """One rule of a gate verdict: ✓ holds, ✗ fails the gate, ! broken but only a warning."""
    failed = rule.get("failed", not rule["ok"] and rule["level"] == "fail")
    mark = "[green]✓[/]" if rule["ok"] else "[red]✗[/]" if failed else "[yellow]![/]"
    level = "warn, failing under fail_on_warn" if failed and rule["level"] == "warn" else rule["level"]
    return f"{mark} {rule['rule']:<34} {rule['value']!s:>10}  (threshold {rule['threshold']}, {level})"


def render_gate(verdict: dict, console: Console) -> None:
    """Every rule of a gate verdict, then the verdict naming each rule that failed it."""
    for rule in verdict["rules"]:
        console.print(gate_rule_line(rule), soft_wrap=True)
    name = escape(str(verdict["policy"]))
    if verdict["passed"]:
        console.print(f"gate {name}: [green]passed[/]", soft_wrap=True)
    else:
        failed = ", ".join(f["rule"] for f in verdict["failures"])
        console.print(f"gate {name}: [bold red]FAILED[/] ({failed})", soft_wrap=True)
