"""diagnose(): models + loaders in, a Diagnosis out. No CLI, no printing beyond progress bars."""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checks as _checks  # noqa: F401  (registers the battery)
from ._cache import TeacherCache, model_fingerprint
from ._dist import gather_ints, rank_world
from ._progress import progress
from ._version import __version__
from .causes import rank, verdict
from .checks.base import Finding, get_check, jsonable, list_checks, run_check
from .checks.preprocessing_parity import LOG_STD_WARN, SMD_WARN
from .config import DiagnoseConfig
from .data import DataBundle
from .engine import evaluate_split, pick_device
from .errors import UserError
from .evaluation import Evaluation
from .losses import effective_weights, loss_weights
from .metrics.functional import proportion_intervals

SCHEMA = "kddoctor/results/v1"
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class Diagnosis:
    """The outcome of one diagnosis: metrics, findings, ranked causes, gate result."""

    run: dict
    metrics: dict
    checks: list[Finding]
    causes: list[dict]
    gate: dict = field(default_factory=lambda: {"passed": True, "failures": []})
    verdict: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # aggregated plot data for the report
    logits: dict[str, np.ndarray] | None = None

    def to_dict(self) -> dict:
        """The results.json document (schema kddoctor/results/v1)."""
        return jsonable(
            {
                "schema": SCHEMA,
                "run": self.run,
                "metrics": self.metrics,
                "checks": [f.to_dict() for f in self.checks],
                "causes": self.causes,
                "verdict": self.verdict,
                "notes": self.notes,
                "gate": self.gate,
            }
        )

    def finding(self, check_id: str) -> Finding | None:
        return next((f for f in self.checks if f.id == check_id), None)

    @property
    def likely_causes(self) -> list[dict]:
        return [c for c in self.causes if c["likely"]]

    def save(self, out_dir: str | Path, *, report: bool = True, cdn: bool = False) -> Path:
        """Write results.json (+ report.html, report.md, logits.npz) atomically into out_dir."""
        from .report import render_html, render_markdown

        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"--out {out} cannot be created ({e.strerror}); choose a writable directory"
            ) from e
        files: dict[str, bytes] = {
            "results.json": (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode()
        }
        if report:
            files["report.md"] = render_markdown(self).encode()
            files["report.html"] = render_html(self, cdn=cdn).encode()
        if self.logits is not None:
            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, **self.logits)
            files["logits.npz"] = buf.getvalue()
        atomic_write_many(out, files)
        return out


def atomic_write_many(out: Path, files: dict[str, bytes]) -> None:
    """Write every file to a temp name first, then rename: a failure leaves old outputs intact."""
    temps = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            temps.append((tmp, out / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644 & ~_UMASK)
    except OSError as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"--out {out} is not writable ({e.strerror}); choose another directory") from e
    for tmp, final in temps:
        os.replace(tmp, final)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def diagnose(
    teacher: nn.Module,
    student: nn.Module,
    train: Iterable,
    val: Iterable,
    *,
    train_eval: Iterable | None = None,
    alpha: float = 0.7,
    alpha_on: str = "kd",
    temperature: float = 4.0,
    t2: bool = True,
    kd_reduction: str = "batchmean",
    device: str = "auto",
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    quick: bool = False,
    save_logits: bool = False,
    checks: Iterable[str] | None = None,
    show_progress: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    teacher_cache: str | Path | None = None,
    teacher_spec: str = "teacher",
    student_spec: str = "student",
    debug: bool = False,
    config: DiagnoseConfig | None = None,
) -> Diagnosis:
    """Diagnose a teacher-student pair.

    Args:
        teacher, student: the two models (any nn.Module returning [B, classes] logits).
        train, val: loaders (or iterables) of (inputs, targets) or dict batches.
        train_eval: optional training data under inference transforms.
        alpha, alpha_on, temperature, t2, kd_reduction: how the student was trained (the KD convention).
        device: "auto" picks CUDA when present.
        quick: shrink every probe budget (CPU-friendly smoke runs).
        checks: ids of the checks to run (default: all registered).
        compile: torch.compile both models (worth it for long runs on GPU).
        teacher_cache: a directory for cached teacher logits; a second diagnosis of another student
            against the same teacher and data skips the teacher pass. None disables it.

    Returns:
        A Diagnosis; call `.save(out_dir)` to write results.json and the reports.
    """
    cfg = config or DiagnoseConfig(
        alpha=alpha,
        alpha_on=alpha_on,
        temperature=temperature,
        t2=t2,
        kd_reduction=kd_reduction,
        device=device,
        limit=limit,
        seed=seed,
        quick=quick,
        save_logits=save_logits,
    )
    start = time.perf_counter()
    _seed_everything(cfg.seed)
    dev = pick_device(cfg.device)
    teacher_id = model_fingerprint(teacher, teacher_spec) if teacher_cache is not None else None
    modes = (teacher.training, student.training)
    teacher.to(dev).eval()
    student.to(dev).eval()
    if channels_last and dev.type == "cuda":
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    run_t, run_s = (torch.compile(teacher), torch.compile(student)) if compile else (teacher, student)
    loaders = {"train": train, "val": val, **({"train_eval": train_eval} if train_eval is not None else {})}
    try:
        with progress(show_progress) as bar:
            splits = _evaluate_splits(
                run_t,
                run_s,
                loaders,
                cfg,
                dev,
                num_classes,
                bar,
                channels_last,
                (teacher_cache, teacher_id),
                class_names,
            )
            num_classes = num_classes or len(splits["train"].stats["cls_count"])
            ev = Evaluation(
                teacher, student, cfg, dev, int(num_classes), splits, class_names, teacher_spec, student_spec
            )
            # Probes run once: on rank 0 under torchrun.
            findings = _run_checks(ev, checks, bar, debug) if rank_world()[0] == 0 else []
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    metrics = {
        name: {
            **{k: r.metrics[k] for k in ("teacher", "student", "agreement", "kl", "n", "excluded_nonfinite")},
            "ci95": proportion_intervals(r.stats),
        }
        for name, r in splits.items()
    }
    run = _run_metadata(ev, teacher_spec, student_spec, class_names)
    finding_dicts = [f.to_dict() for f in findings]
    causes = rank(finding_dicts, remedy_context(ev, findings))
    timings = {f"eval_{name}": r.seconds for name, r in splits.items()}
    timings.update({f"check_{f.id}": f.seconds for f in findings})
    run["timings"] = {k: round(v, 4) for k, v in timings.items()}
    caches = {name: r.teacher_cache for name, r in splits.items() if r.teacher_cache is not None}
    if caches:  # how the teacher pass went, like a timing: differs between a first and a second run
        run["timings"]["teacher_cache"] = caches
    run["seconds"] = round(time.perf_counter() - start, 3)
    details = {
        "per_class": {name: _per_class(r.stats) for name, r in splits.items()},
        "checks": {f.id: f.details for f in findings if f.details},
    }
    logits = None
    if cfg.save_logits:
        logits = {f"{name}_{k}": v for name, r in splits.items() for k, v in (r.all_logits or {}).items()}
    return Diagnosis(
        run=run,
        metrics=metrics,
        checks=findings,
        causes=causes,
        verdict=verdict(finding_dicts, causes),
        notes=run_notes(ev),
        details=details,
        logits=logits,
    )


def _evaluate_splits(
    teacher, student, loaders, cfg, dev, num_classes, bar, channels_last, cache, class_names=None
) -> dict:
    """The main pass over every split (teacher logits from the cache where the inputs match)."""
    rank_, world = rank_world()
    cache_dir, teacher_id = cache
    splits = {}
    for name, loader in loaders.items():
        tc = TeacherCache(Path(cache_dir), teacher_id, name, cfg.limit, rank_, world) if cache_dir else None
        splits[name] = evaluate_split(
            teacher,
            student,
            loader,
            name=name,
            num_classes=num_classes,
            device=dev,
            limit=cfg.limit,
            feature_rows=cfg.budgets.feature_rows,
            cache_rows=cfg.budgets.probe_samples,
            save_logits=cfg.save_logits,
            channels_last=channels_last,
            bar=bar,
            rank=rank_,
            world=world,
            teacher_cache=tc,
            seed=cfg.seed,
            probe_augmentation=name in ("train", "train_eval"),
            class_names=class_names,
        )
        num_classes = num_classes or len(splits[name].stats["cls_count"])
    return splits


def _run_checks(ev: Evaluation, checks: Iterable[str] | None, bar, debug: bool) -> list[Finding]:
    wanted = list(checks) if checks is not None else list_checks()
    unknown = [c for c in wanted if c not in list_checks()]
    if unknown:
        raise UserError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(list_checks())}")
    findings = []
    task = bar.add_task("running checks", total=len(wanted))
    for cid in wanted:
        bar.update(task, description=f"check {cid}")
        _seed_everything(ev.config.seed)
        findings.append(run_check(get_check(cid), ev, debug=debug))
        bar.advance(task)
    return findings


def _run_metadata(
    ev: Evaluation, teacher_spec: str, student_spec: str, class_names: list[str] | None
) -> dict:
    cfg = ev.config
    eff = effective_weights(
        cfg.alpha, cfg.alpha_on, cfg.temperature, cfg.t2, cfg.kd_reduction, ev.num_classes, cfg.batch_size
    )
    splits = ev.splits
    run = {
        "kddoctor_version": __version__,
        "torch_version": torch.__version__,
        "device": str(ev.device),
        "teacher": teacher_spec,
        "student": student_spec,
        "alpha": cfg.alpha,
        "alpha_on": cfg.alpha_on,
        "temperature": cfg.temperature,
        "t2": cfg.t2,
        "kd_reduction": cfg.kd_reduction,
        "convention": convention_sentence(cfg, eff),
        "effective_weights": eff,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "num_classes": ev.num_classes,
        "class_names": class_names,
        "n": {name: r.n for name, r in splits.items()},
        "label_notes": sorted({note for r in splits.values() for note in r.label_notes}),
        "world_size": rank_world()[1],
        "rank_samples": {name: gather_ints(r.local_rows) for name, r in splits.items()},
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    splits_oom = sum(r.micro_batch_splits for r in splits.values())
    if splits_oom:
        run["micro_batch_splits"] = splits_oom
    return run


def run_notes(ev: Evaluation) -> list[str]:
    """What the reader must know to read the numbers: the train side, augmentation, subsets."""
    notes = [f"train-side measurements (gaps, membership, probes) use the '{ev.train_source}' loader"]
    if ev.train_augmented:
        fix = "" if ev.train_source == "train_eval" else "; pass a 'train_eval' loader to measure without it"
        notes.append(
            f"the {ev.train_source} loader augments ({ev.train.augmented:.0%} of inputs change between "
            f"two passes): train-side numbers are measured on augmented inputs{fix}"
        )
    for name, r in ev.splits.items():
        if r.sampled:
            notes.append(f"{name}: {r.sampled}")
    return notes


def _per_class(stats: dict) -> dict:
    """Per-class rates; None for a class without samples (missing, not 0 %)."""
    count = stats["cls_count"]
    rate = lambda key: [float(v / c) if c else None for v, c in zip(stats[key], count, strict=True)]  # noqa: E731
    return {
        "count": count.tolist(),
        "agreement": rate("cls_agree"),
        "teacher_acc": rate("cls_t_correct"),
        "student_acc": rate("cls_s_correct"),
    }


def convention_sentence(cfg: DiagnoseConfig, eff: dict) -> str:
    """The KD convention assumed, stated in words with each term's effective weight."""
    if cfg.alpha_on == "kd":
        form = f"loss = (1-{cfg.alpha:g})*CE + {cfg.alpha:g}*KD"
    else:
        form = f"loss = {cfg.alpha:g}*CE + (1-{cfg.alpha:g})*KD"
    t2 = f"KD multiplied by T²={cfg.temperature**2:g}" if cfg.t2 else "KD not multiplied by T² (--no-t2)"
    return (
        f"{form} with T={cfg.temperature:g}, {t2}, KL reduced by '{cfg.kd_reduction}'; effective weights: "
        f"CE {eff['ce']:.3g}, KD {eff['kd_effective']:.3g} in CE-gradient units "
        f"({eff['kd_share']:.0%} of the total)"
    )


def remedy_context(ev: Evaluation, findings: list[Finding]) -> dict:
    """Values remedies are written with: the user's convention, the sweep's advice, the normalization."""
    cfg = ev.config
    w_kd = loss_weights(cfg.alpha, cfg.alpha_on)[1]
    ctx = {
        "alpha": cfg.alpha,
        "alpha_on": cfg.alpha_on,
        "temperature": cfg.temperature,
        "alpha_kd": w_kd,
        "num_classes": ev.num_classes,
        "rec_alpha": w_kd,
        "rec_T": cfg.temperature,
        "student_arch": ev.student_spec.removeprefix("timm:").split("?")[0],
    }
    by_id = {f.id: f for f in findings}
    alpha = by_id.get("alpha_sensitivity")
    if alpha is not None and "recommended" in alpha.evidence:
        ctx["rec_alpha"] = alpha.evidence["recommended"]["alpha"]
        ctx["rec_T"] = alpha.evidence["recommended"]["temperature"]
    ctx["norm_advice"] = normalization_advice(ev, by_id.get("preprocessing_parity"))
    return ctx


def normalization_advice(ev: Evaluation, pp: Finding | None) -> str:
    """The normalization a remedy should name: the constants that map the val inputs onto the train
    inputs' statistics when they differ, else the student's declared config, else the train statistics."""
    fmt = lambda xs: "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"  # noqa: E731
    tr, va = ev.train.inputs, ev.val.inputs
    if pp is not None and (
        pp.evidence.get("max_smd", 0) > SMD_WARN or pp.evidence.get("max_log_std_ratio", 0) > LOG_STD_WARN
    ):
        mt, st, mv, sv = (np.array(d[k]) for d in (tr, va) for k in ("mean", "std"))
        if mt.shape == mv.shape:
            scale = sv / np.maximum(st, 1e-12)
            # x_val' = (x_val - a) / b has train's mean and std when a = m_v - m_t * b, b = s_v / s_t
            need = f"Normalize(mean={fmt(mv - mt * scale)}, std={fmt(scale)})"
            return (
                f"measured here, the val inputs need {need} on top of what they get now to match the "
                f"train inputs (train mean {fmt(mt)}, std {fmt(st)}; val mean {fmt(mv)}, std {fmt(sv)})"
            )
    cfg_s = pp.evidence.get("data_config", {}).get("student") if pp is not None else None
    if cfg_s:
        return f"the student's data config: mean={cfg_s['mean']}, std={cfg_s['std']}"
    return f"the train inputs arrive with mean {fmt(tr.get('mean', []))}, std {fmt(tr.get('std', []))}"


def diagnose_bundle(teacher: nn.Module, student: nn.Module, data: DataBundle, **kw) -> Diagnosis:
    """diagnose() over a DataBundle (what FACTORY and --data-dir produce); its notes land in run."""
    diag = diagnose(
        teacher,
        student,
        data.splits["train"],
        data.splits["val"],
        train_eval=data.splits.get("train_eval"),
        class_names=data.class_names,
        **kw,
    )
    if data.notes:
        diag.run["data_notes"] = list(data.notes)
    return diag
