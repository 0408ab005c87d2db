"""diagnose(): models + loaders in, a Diagnosis out. No CLI, no printing beyond progress bars.

A short chain of typed stages: the main pass (`Evaluation`) -> the checks (`list[Finding]`) -> the run
facts and the ranked causes with their remedies (`causes.rank`) -> the verdict -> `Diagnosis`. The gate
is applied afterwards (`Diagnosis.apply_gate`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checks as _checks  # noqa: F401  (registers the battery)
from ._cache import TeacherCache, model_fingerprint
from ._dist import rank_world
from ._progress import progress
from .causes import rank, verdict
from .checks.base import Finding, get_check, list_checks, run_check
from .config import TRAIN_SAMPLES, DiagnoseConfig
from .convention import KDConvention, resolve
from .data import DataBundle
from .diagnosis import Diagnosis, run_metadata
from .engine import evaluate_split, pick_device
from .errors import UserError
from .evaluation import Evaluation

__all__ = ["Diagnosis", "diagnose", "diagnose_bundle"]
LEGACY_CONVENTION = ("alpha", "alpha_on", "temperature", "t2", "kd_reduction")


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
    convention: KDConvention | None = None,
    device: str = "auto",
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    limit: int | None = None,
    train_samples: int | None = TRAIN_SAMPLES,
    val_samples: int | None = None,
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
    **legacy,
) -> Diagnosis:
    """Diagnose a teacher-student pair.

    Args:
        teacher, student: the two models (any nn.Module returning [B, classes] logits).
        train, val: loaders (or iterables) of (inputs, targets) or dict batches.
        train_eval: optional training data under inference transforms.
        convention: how the student was trained (`KDConvention`; default (1-0.7)*CE + 0.7*T²*KL at
            T=4). The older keywords alpha, alpha_on, temperature, t2, kd_reduction still work.
        device: "auto" picks CUDA when present.
        limit: at most this many samples of every split.
        train_samples: the train side is a seeded, class-stratified sample of this many samples
            (None: the whole split); val_samples likewise for val (default: all of it).
        quick: shrink every probe budget (CPU-friendly smoke runs).
        checks: ids of the checks to run (default: all registered).
        compile: torch.compile both models (worth it for long runs on GPU).
        teacher_cache: a directory for cached teacher logits; a second diagnosis of another student
            against the same teacher and data skips the teacher pass. None disables it.

    Returns:
        A Diagnosis; call `.save(out_dir)` to write results.json and the reports.
    """
    cfg = config or DiagnoseConfig(
        convention=convention or _legacy_convention(legacy),
        device=device,
        limit=limit,
        train_samples=train_samples,
        val_samples=val_samples,
        seed=seed,
        quick=quick,
        save_logits=save_logits,
    )
    start = time.perf_counter()
    loaders = {"train": train, "val": val, **({"train_eval": train_eval} if train_eval is not None else {})}
    specs, opts = (teacher_spec, student_spec), (teacher_cache, channels_last, compile, teacher_spec)
    with progress(show_progress) as bar, _placed(teacher, student, cfg, opts) as (dev, run_models, t_id):
        splits = _evaluate_splits(
            *run_models,
            loaders,
            cfg,
            dev,
            num_classes,
            bar,
            channels_last,
            (teacher_cache, t_id),
            class_names,
        )
        num_classes = num_classes or len(splits["train"].stats["cls_count"])
        ev = Evaluation(
            teacher, student, cfg, dev, int(num_classes), splits, class_names, *specs, progress=bar
        )
        findings = _run_checks(ev, checks, bar, debug) if rank_world()[0] == 0 else []  # probes: rank 0
    found, run = [f.to_dict() for f in findings], run_metadata(ev)
    causes = rank(found, run)
    return Diagnosis.from_evaluation(ev, run, findings, causes, verdict(found, causes), start)


def _legacy_convention(legacy: dict) -> KDConvention:
    """The convention from the older keyword arguments (alpha=..., alpha_on=..., ...)."""
    unknown = set(legacy) - set(LEGACY_CONVENTION)
    if unknown:
        raise TypeError(f"diagnose() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    return resolve(
        alpha=legacy.get("alpha"),
        alpha_on=legacy.get("alpha_on"),
        temperature=legacy.get("temperature"),
        no_t2=not legacy.get("t2", True),
        reduction=legacy.get("kd_reduction"),
    )


@contextlib.contextmanager
def _placed(teacher: nn.Module, student: nn.Module, cfg: DiagnoseConfig, options: tuple) -> Iterator[tuple]:
    """Both models on the device in eval mode (channels-last, compiled when asked) for the run; their
    train/eval modes are restored afterwards. Yields (device, (teacher, student) to run, teacher id)."""
    cache_dir, channels_last, compile, teacher_spec = options
    _seed_everything(cfg.seed)
    dev = pick_device(cfg.device)
    teacher_id = model_fingerprint(teacher, teacher_spec) if cache_dir is not None else None
    modes = (teacher.training, student.training)
    teacher.to(dev).eval()
    student.to(dev).eval()
    if channels_last and dev.type == "cuda":
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    run = (torch.compile(teacher), torch.compile(student)) if compile else (teacher, student)
    try:
        yield dev, run, teacher_id
    finally:
        teacher.train(modes[0])
        student.train(modes[1])


def _evaluate_splits(
    teacher, student, loaders, cfg, dev, num_classes, bar, channels_last, cache, class_names=None
) -> dict:
    """The main pass over every split (teacher logits from the cache where the inputs match)."""
    rank_, world = rank_world()
    cache_dir, teacher_id = cache
    splits = {}
    for name, loader in loaders.items():
        limit, explicit = cfg.split_limit(name)
        tc = TeacherCache(Path(cache_dir), teacher_id, name, limit, rank_, world) if cache_dir else None
        splits[name] = evaluate_split(
            teacher,
            student,
            loader,
            name=name,
            num_classes=num_classes,
            device=dev,
            limit=limit,
            explicit_limit=explicit,
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
