"""Command line: parse -> call the Python API -> render -> exit code. Nothing else lives here."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Outputs:
    """Where and how a finished diagnosis is written and gated."""

    policy: Path | None = None
    junit: Path | None = None
    baseline: Path | None = None
    quiet: bool = False
    cdn: bool = False


def _finish(diag, out: Path, opts: Outputs) -> int:
    """Gate (when a policy is given), write the reports, render the summary; the exit code."""
    from .gate import github_outputs, load_policy, load_results, parse_policy
    from .report import render_markdown
    from .report.junit import render_junit
    from .report.terminal import render_summary

    pol = load_policy(opts.policy) if opts.policy else None
    if pol is None and opts.baseline:  # a baseline alone gates on its regression rules at their default
        pol = parse_policy("[gate]", "--baseline (regression rules only)")
    if pol is not None:
        diag.apply_gate(pol, load_results(opts.baseline, "--baseline") if opts.baseline else None)
    diag.save(out, cdn=opts.cdn)
    doc = diag.to_dict()
    if opts.junit:
        _write_text(opts.junit, render_junit(doc, diag.gate if pol else None), "--junit")
    if not opts.quiet:
        render_summary(doc, Console(), str(out))
    if pol is not None:
        github_outputs(diag.gate, render_markdown(doc))
    return diag.exit_code


def _write_text(path: Path, text: str, flag: str) -> None:
    """Write one file atomically; a failure names the flag that chose the path."""
    from ._io import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path.parent, {path.name: text.encode()})
    except (OSError, UserError) as e:
        reason = getattr(e, "strerror", None) or getattr(e.__cause__, "strerror", None) or "not writable"
        raise UserError(f"{flag} {path} cannot be written ({reason}); choose a writable path") from e


Opt = typer.Option


@app.command()
def diagnose(
    teacher: Annotated[
        str,
        Opt(
            help="Teacher SPEC: timm:ARCH[?k=v], file.py:FUNC or module:FUNC; causal-lm also hf:DIR and "
            "topk:PATH (an offline top-k capture: .npz/.safetensors arrays or DistillKit's parquet dir)."
        ),
    ],
    student: Annotated[str, Opt(help="Student SPEC (same forms as --teacher).")],
    teacher_ckpt: Annotated[Path | None, Opt(help="Teacher checkpoint (.pt/.pth/.safetensors).")] = None,
    student_ckpt: Annotated[Path | None, Opt(help="Student checkpoint.")] = None,
    data: Annotated[
        str | None, Opt(help="Data FACTORY: file.py:FUNC or module:FUNC returning train/val.")
    ] = None,
    data_dir: Annotated[Path | None, Opt(help="ImageFolder root with train/ and val/.")] = None,
    data_arg: Annotated[list[str] | None, Opt(help="key=value passed to the FACTORY (repeatable).")] = None,
    num_classes: Annotated[int | None, Opt(help="Number of classes (default: from the checkpoints).")] = None,
    alpha: Annotated[
        float | None, Opt(help="The alpha the student was trained with (default 0.7, stated as assumed).")
    ] = None,
    alpha_on: Annotated[
        str | None, Opt(help="Which term alpha weighted: kd -> (1-a)CE + aKD (default); ce -> aCE + (1-a)KD.")
    ] = None,
    ce_weight: Annotated[
        float | None, Opt(help="The CE term's weight, stated directly (with --kd-weight).")
    ] = None,
    kd_weight: Annotated[float | None, Opt(help="The KD term's weight (any sum with --ce-weight).")] = None,
    temperature: Annotated[
        float | None, Opt(help="KD temperature T used in training (default 4, stated as assumed).")
    ] = None,
    no_t2: Annotated[bool, Opt("--no-t2", help="The training loss did NOT multiply KD by T².")] = False,
    kd_reduction: Annotated[
        str | None,
        Opt(
            help="How training reduced the KL: for images batchmean (the default), mean, sum; with "
            "--task causal-lm token (the default: per counted token), batchmean, mean, sum."
        ),
    ] = None,
    train_batch_size: Annotated[
        int | None, Opt(help="The training batch size (what --kd-reduction sum scales by).")
    ] = None,
    task: Annotated[
        str, Opt(help="classification, or causal-lm (per-token metrics and the LM checks; hf:DIR SPECs).")
    ] = "classification",
    teacher_top_k: Annotated[
        int | None, Opt(help="causal-lm: the KD target kept only the teacher's top K logits.")
    ] = None,
    kd_dtype: Annotated[
        str, Opt(help="causal-lm: the dtype the KD loss ran in: float32 (default), bfloat16, float16.")
    ] = "float32",
    divergence: Annotated[
        str | None,
        Opt(
            help="causal-lm: the KD divergence: forward_kl (default), reverse_kl, jsd, skew_forward_kl, "
            "skew_reverse_kl, tv."
        ),
    ] = None,
    beta: Annotated[
        float | None,
        Opt(help="causal-lm: a JSD's beta (TRL: 0 forward KL, 1 reverse KL) or a skew KL's alpha."),
    ] = None,
    lmbda: Annotated[
        float | None, Opt(help="causal-lm: the share of batches the student generated itself (TRL's lmbda).")
    ] = None,
    top_k_rule: Annotated[
        str | None,
        Opt(
            help="causal-lm: a top-k target's missing mass: renormalize (DistillKit zero), tail "
            "(symmetric_uniform), none; under trl-server-distill, tail is its loss_add_tail and renormalize "
            "renormalizes both sides."
        ),
    ] = None,
    teacher_device_map: Annotated[
        str | None,
        Opt(help="causal-lm, hf: teacher: spread it over devices (auto, balanced, ...; needs accelerate)."),
    ] = None,
    teacher_dtype: Annotated[
        str | None, Opt(help="causal-lm, hf: teacher: load it in auto, float32, bfloat16 or float16.")
    ] = None,
    allow_vocab_truncation: Annotated[
        bool, Opt("--allow-vocab-truncation", help="causal-lm: compare the first min(V) vocabulary rows.")
    ] = False,
    convention: Annotated[
        str | None,
        Opt(
            "--convention",
            "--preset",
            help="A codebase's loss convention: kd, torchdistill, mdistiller, repdistiller, timm, deit; "
            "causal-lm trainers: trl-gkd, trl-distill, trl-server-distill, distillkit, minillm, distillm "
            "(--preset: the same).",
        ),
    ] = None,
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, Opt(help="Batch size for loaders kddoctor builds (--data-dir).")] = 256,
    limit: Annotated[int | None, Opt(help="At most N samples per split.")] = None,
    train_samples: Annotated[
        str | None,
        Opt(
            help="Train-side sample size, N or 'all' (default 50000, class-stratified; causal-lm: 4096 rows)."
        ),
    ] = None,
    val_samples: Annotated[str | None, Opt(help="Val sample size, N or 'all' (default all).")] = None,
    probe_seconds: Annotated[
        float | None,
        Opt(help="Time budget per fine-tuning probe (default: 0.1x the main pass, at least 3 s)."),
    ] = None,
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
    options = dict(locals())  # every option above, by name
    from .runner import DiagnoseArgs, diagnose_command

    args = DiagnoseArgs(**options)

    def go() -> int:
        from ._dist import shutdown

        diag, out = diagnose_command(args)
        try:  # under torchrun, rank 0 alone writes and reports (the others get no diagnosis)
            return _finish(diag, out, Outputs(policy, junit, baseline, quiet, report_cdn)) if diag else 0
        finally:
            shutdown()  # releases the other ranks waiting at the final barrier

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
    from .gate import evaluate, github_outputs, load_policy, load_results
    from .report import render_markdown
    from .report.junit import render_junit
    from .report.terminal import render_gate

    def go() -> int:
        from .runner import probe_outputs

        probe_outputs(None, junit)
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
    out: Annotated[Path | None, Opt(help="Output directory (default reports/demo, reports/lm-demo).")] = None,
    task: Annotated[
        str, Opt(help="classification (digits CNNs) or causal-lm (tiny byte-level GPT-2s; kddoctor[lm]).")
    ] = "classification",
    quick: Annotated[bool, Opt("--quick", help="Small probe budgets.")] = False,
    policy: Annotated[Path | None, Opt(help="Gate policy TOML.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    debug: Annotated[bool, Opt("--debug")] = False,
) -> None:
    """Build (once, cached) a real digits teacher/student pair and diagnose it."""
    from .config import DiagnoseConfig
    from .runner import diagnose_specs
    from .zoo import demo as demo_mod

    def go() -> int:
        from ._progress import progress_mode
        from .runner import probe_outputs

        if task not in ("classification", "causal-lm"):
            raise UserError(f"--task must be one of classification, causal-lm, got {task!r}")
        target = out or Path("reports/demo" if task == "classification" else "reports/lm-demo")
        probe_outputs(target, None)
        con = Console(stderr=True)
        if not quiet:
            con.print("[dim]building the demo pair (cached after the first run)...[/]")
        if task == "causal-lm":
            return _lm_demo(target, Outputs(policy=policy, quiet=quiet), quick=quick)
        t_path, s_path = demo_mod.build_demo_pair()
        cfg = DiagnoseConfig(convention=demo_mod.demo_convention(), quick=quick)
        diag = diagnose_specs(
            "kddoctor.zoo.demo:teacher_cnn",
            "kddoctor.zoo.demo:student_cnn",
            teacher_ckpt=t_path,
            student_ckpt=s_path,
            data="kddoctor.zoo.demo:digits_loaders",
            data_dir=None,
            data_args=[f"train_subset={demo_mod.DEMO_STUDENT_SUBSET}"],
            num_classes=None,
            config=cfg,
            show_progress=progress_mode(quiet),
            debug=debug,
        )
        return _finish(diag, target, Outputs(policy=policy, quiet=quiet))

    raise typer.Exit(_guard(go, debug))


def _lm_demo(out: Path, outputs: Outputs, quick: bool = False) -> int:
    """`kddoctor demo --task causal-lm`: tiny GPT-2s (transformers, random init, trained here) as hf: dirs."""
    from .runner import DiagnoseArgs, diagnose_command
    from .zoo.lm import Distill
    from .zoo.lm_demo import DEMO_SEQUENCES, build_lm_demo_pair

    t_dir, s_dir = build_lm_demo_pair()
    recipe = Distill()
    args = DiagnoseArgs(
        teacher=f"hf:{t_dir}",
        student=f"hf:{s_dir}",
        data="kddoctor.zoo.lm:loaders",
        data_arg=[f"sequences={DEMO_SEQUENCES}"],
        task="causal-lm",
        alpha=recipe.alpha_kd,
        temperature=recipe.temperature,
        out=out,
        quiet=outputs.quiet,
        quick=quick,
    )
    diag, target = diagnose_command(args)
    return _finish(diag, target, outputs)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results.json written by kddoctor diagnose.")],
    out: Annotated[Path | None, Opt(help="Output directory (default: the results file's own).")] = None,
    cdn: Annotated[bool, Opt("--report-cdn", help="Load plotly.js from a CDN (smaller report).")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q")] = False,
    debug: Annotated[bool, Opt("--debug")] = False,
) -> None:
    """Rebuild report.html and report.md from a results.json alone (no models, no data)."""
    from .diagnosis import Diagnosis
    from .gate import load_results
    from .report import render_html, render_markdown
    from .runner import probe_outputs

    def go() -> int:
        target = out or results.parent
        probe_outputs(target, None)
        diag = Diagnosis.from_dict(load_results(results))
        files = {"report.html": render_html(diag, cdn=cdn), "report.md": render_markdown(diag)}
        for name, text in files.items():
            _write_text(target / name, text, "--out")
        if not quiet:
            typer.echo(f"wrote {target / 'report.html'}, report.md")
        return 0

    raise typer.Exit(_guard(go, debug))


def main() -> None:
    """Console-script entry point: a usage error (an unknown option, a missing value) is one line and exit
    2, as every other bad input is."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # typer's own click exceptions (usage errors among them)
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help
            e.show()
            code = EXIT_BAD_INPUT
        else:
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            code = _fail(f"{e.format_message().rstrip('.')}{where}", getattr(e, "exit_code", 2)).exit_code
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except SystemExit as e:
        code = e.code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
