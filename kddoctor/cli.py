"""Command line: parse -> call the Python API -> render -> exit code. Nothing else lives here."""

from __future__ import annotations

import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._version import __version__
from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find out why a distilled student generalizes worse than its teacher.",
)
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kddoctor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """kddoctor: teacher-student diagnosis for knowledge distillation."""


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"kddoctor: error: {msg}", err=True)
    return typer.Exit(code)


def _guard(fn, debug: bool):
    """Run fn(); user errors become one line and exit 2, Ctrl-C exits 130, --debug shows tracebacks."""
    try:
        return fn()
    except UserError as e:
        if debug:
            traceback.print_exc()
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        typer.echo("kddoctor: interrupted; nothing was written and earlier reports are intact", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as e:  # e.g. a user model failing on the data: still one line, still exit 2
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        raise _fail(f"{type(e).__name__}: {msg[:300]} (rerun with --debug for the traceback)") from None


def run_name(student: str, teacher: str) -> str:
    stem = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s.split(":")[-1].split("?")[0])[:40] or "model"  # noqa: E731
    return f"{stem(student)}_vs_{stem(teacher)}"


def _finish(
    diag, out: Path, *, policy: Path | None, junit: Path | None, baseline: Path | None, quiet: bool, cdn: bool
) -> int:
    from ._render import render_summary
    from .gate import evaluate, github_outputs, load_policy, load_results
    from .report import render_markdown
    from .report.junit import render_junit

    pol = load_policy(policy) if policy else None
    base = load_results(baseline, "--baseline") if baseline else None
    if pol is not None:
        diag.gate = evaluate(diag.to_dict(), pol, base)
    diag.save(out, cdn=cdn)
    doc = diag.to_dict()
    if junit:
        _write_text(junit, render_junit(doc, diag.gate if pol else None), "--junit")
    if not quiet:
        render_summary(doc, Console(), str(out))
    if pol is not None:
        github_outputs(diag.gate, render_markdown(doc))
    return 0 if diag.gate["passed"] else EXIT_GATE_FAILED


def _write_text(path: Path, text: str, flag: str) -> None:
    """Write one file atomically; a failure names the flag that chose the path."""
    from .api import atomic_write_many

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_many(path.parent, {path.name: text.encode()})
    except (OSError, UserError) as e:
        reason = getattr(e, "strerror", None) or getattr(e.__cause__, "strerror", None) or "not writable"
        raise UserError(f"{flag} {path} cannot be written ({reason}); choose a writable path") from e


def _probe_dir(directory: Path, flag: str, target: Path | None = None) -> None:
    """Before any work: can `directory` (made later if missing) take files? Leaves nothing behind."""
    target = target or directory
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{flag} {target} cannot be created ({existing} is not a directory); choose a writable path"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {target} is not writable ({e.strerror}); choose a writable path") from e


def _probe_outputs(out: Path | None, junit: Path | None) -> None:
    """--out and --junit are checked before the run, not after it."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; choose a directory")
        _probe_dir(out, "--out")
    if junit is not None:
        if junit.is_dir():
            raise UserError(f"--junit {junit} is a directory; name the XML file to write")
        _probe_dir(junit.parent, "--junit", junit)


Opt = typer.Option


@app.command()
def diagnose(
    teacher: Annotated[str, Opt(help="Teacher SPEC: timm:ARCH[?k=v], file.py:FUNC or module:FUNC.")],
    student: Annotated[str, Opt(help="Student SPEC (same forms as --teacher).")],
    teacher_ckpt: Annotated[Path | None, Opt(help="Teacher checkpoint (.pt/.pth/.safetensors).")] = None,
    student_ckpt: Annotated[Path | None, Opt(help="Student checkpoint.")] = None,
    data: Annotated[
        str | None, Opt(help="Data FACTORY: file.py:FUNC or module:FUNC returning train/val.")
    ] = None,
    data_dir: Annotated[Path | None, Opt(help="ImageFolder root with train/ and val/.")] = None,
    data_arg: Annotated[list[str] | None, Opt(help="key=value passed to the FACTORY (repeatable).")] = None,
    num_classes: Annotated[int | None, Opt(help="Number of classes (default: from the checkpoints).")] = None,
    alpha: Annotated[float, Opt(help="The alpha the student was trained with.")] = 0.7,
    alpha_on: Annotated[
        str, Opt(help="Which term alpha weighted: kd -> (1-a)CE + aKD; ce -> aCE + (1-a)KD.")
    ] = "kd",
    temperature: Annotated[float, Opt(help="KD temperature T used in training.")] = 4.0,
    no_t2: Annotated[bool, Opt("--no-t2", help="The training loss did NOT multiply KD by T².")] = False,
    kd_reduction: Annotated[
        str, Opt(help="How training reduced the KL: batchmean, mean or sum.")
    ] = "batchmean",
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, Opt(help="Batch size for loaders kddoctor builds (--data-dir).")] = 256,
    limit: Annotated[int | None, Opt(help="At most N samples per split.")] = None,
    seed: Annotated[int, Opt(help="Seed for every probe.")] = 0,
    quick: Annotated[bool, Opt("--quick", help="Small probe budgets: a bounded CPU-friendly run.")] = False,
    policy: Annotated[Path | None, Opt(help="Gate policy TOML: exit 1 when a rule fails.")] = None,
    junit: Annotated[Path | None, Opt(help="Write JUnit XML (one case per rule and check).")] = None,
    baseline: Annotated[Path | None, Opt(help="An earlier results.json for regression rules.")] = None,
    save_logits: Annotated[bool, Opt("--save-logits", help="Also write logits.npz.")] = False,
    out: Annotated[Path | None, Opt(help="Output directory (default reports/<run-name>/).")] = None,
    teacher_ema: Annotated[bool, Opt("--teacher-ema", help="Load the teacher's EMA weights.")] = False,
    student_ema: Annotated[bool, Opt("--student-ema", help="Load the student's EMA weights.")] = False,
    trust_checkpoint: Annotated[
        bool, Opt("--trust-checkpoint", help="Allow checkpoints that unpickle code (only trusted files!).")
    ] = False,
    report_cdn: Annotated[
        bool, Opt("--report-cdn", help="Load plotly.js from a CDN (smaller report).")
    ] = False,
    no_cache: Annotated[
        bool, Opt("--no-cache", help="Do not read or write the teacher output cache.")
    ] = False,
    cache_dir: Annotated[
        Path | None, Opt(help="Teacher-output cache directory (default $KDDOCTOR_CACHE/teacher-outputs).")
    ] = None,
    compile: Annotated[bool, Opt("--compile", help="torch.compile both models (long GPU runs).")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bars or tables.")] = False,
    debug: Annotated[bool, Opt("--debug", help="Full tracebacks on errors.")] = False,
) -> None:
    """Evaluate teacher and student on train and val, run every check, rank the causes, write reports."""
    from ._dist import init_from_env, rank_world, shutdown
    from .config import DiagnoseConfig, check_int
    from .demo import cache_dir as default_cache
    from .engine import pick_device
    from .runner import diagnose_specs

    def go() -> int:
        dev = init_from_env(device)
        cfg = DiagnoseConfig(
            alpha=alpha,
            alpha_on=alpha_on,
            temperature=temperature,
            t2=not no_t2,
            kd_reduction=kd_reduction,
            device=dev,
            batch_size=batch_size,
            limit=limit,
            seed=seed,
            quick=quick,
            save_logits=save_logits,
        )
        if (data is None) == (data_dir is None):
            raise UserError("give exactly one of --data FACTORY or --data-dir DIR")
        for p in (policy, baseline):
            if p is not None and not p.is_file():
                raise UserError(f"{p} not found")
        if num_classes is not None:
            check_int("--num-classes", num_classes, 1)
        pick_device(dev)  # an unusable --device is refused before any work, like the flags above
        target = out or Path("reports") / run_name(student, teacher)
        _probe_outputs(target, junit)
        diag = diagnose_specs(
            teacher,
            student,
            teacher_ckpt=teacher_ckpt,
            student_ckpt=student_ckpt,
            data=data,
            data_dir=data_dir,
            data_args=data_arg or [],
            num_classes=num_classes,
            config=cfg,
            teacher_ema=teacher_ema,
            student_ema=student_ema,
            trust=trust_checkpoint,
            show_progress=not quiet and rank_world()[0] == 0,
            debug=debug,
            teacher_cache=None if no_cache else (cache_dir or default_cache() / "teacher-outputs"),
            compile=compile,
        )
        if rank_world()[0] != 0:  # under torchrun, rank 0 alone writes and reports
            shutdown()
            return 0
        code = _finish(
            diag, target, policy=policy, junit=junit, baseline=baseline, quiet=quiet, cdn=report_cdn
        )
        shutdown()  # releases the other ranks waiting at the final barrier
        return code

    raise typer.Exit(_guard(go, debug))


@app.command()
def gate(
    results: Annotated[Path, typer.Argument(help="results.json written by kddoctor diagnose.")],
    policy: Annotated[Path, Opt(help="Gate policy TOML (see checks/).")],
    junit: Annotated[Path | None, Opt(help="Write JUnit XML.")] = None,
    baseline: Annotated[Path | None, Opt(help="An earlier results.json for regression rules.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    debug: Annotated[bool, Opt("--debug")] = False,
) -> None:
    """Apply a gate policy to a results.json: exit 0 when every rule holds, 1 when one fails."""
    from ._render import render_gate
    from .gate import evaluate, github_outputs, load_policy, load_results
    from .report import render_markdown
    from .report.junit import render_junit

    def go() -> int:
        _probe_outputs(None, junit)
        doc = load_results(results)
        verdict = evaluate(
            doc, load_policy(policy), load_results(baseline, "--baseline") if baseline else None
        )
        doc["gate"] = {k: verdict[k] for k in ("passed", "failures", "warnings", "policy")}
        if junit:
            _write_text(junit, render_junit(doc, verdict), "--junit")
        if not quiet:
            render_gate(verdict, Console())
        github_outputs(verdict, render_markdown(doc))
        return 0 if verdict["passed"] else EXIT_GATE_FAILED

    raise typer.Exit(_guard(go, debug))


@app.command()
def demo(
    out: Annotated[Path, Opt(help="Output directory.")] = Path("reports/demo"),
    quick: Annotated[bool, Opt("--quick", help="Small probe budgets.")] = False,
    policy: Annotated[Path | None, Opt(help="Gate policy TOML.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    debug: Annotated[bool, Opt("--debug")] = False,
) -> None:
    """Build (once, cached) a real digits teacher/student pair and diagnose it."""
    from . import demo as demo_mod
    from .config import DiagnoseConfig
    from .runner import diagnose_specs

    def go() -> int:
        _probe_outputs(out, None)
        con = Console(stderr=True)
        if not quiet:
            con.print("[dim]building the demo pair (cached after the first run)...[/]")
        t_path, s_path = demo_mod.build_demo_pair()
        cfg = DiagnoseConfig(
            alpha=demo_mod.DEMO_RECIPE["alpha"], temperature=demo_mod.DEMO_RECIPE["temperature"], quick=quick
        )
        diag = diagnose_specs(
            "kddoctor.demo:teacher_cnn",
            "kddoctor.demo:student_cnn",
            teacher_ckpt=t_path,
            student_ckpt=s_path,
            data="kddoctor.demo:digits_loaders",
            data_dir=None,
            data_args=[f"train_subset={demo_mod.DEMO_STUDENT_SUBSET}"],
            num_classes=None,
            config=cfg,
            show_progress=not quiet,
            debug=debug,
        )
        return _finish(diag, out, policy=policy, junit=None, baseline=None, quiet=quiet, cdn=False)

    raise typer.Exit(_guard(go, debug))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as e:
        sys.exit(e.code)


if __name__ == "__main__":
    main()
