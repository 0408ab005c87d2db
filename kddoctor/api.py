"""diagnose(): models + loaders in, a Diagnosis out. No CLI, no printing beyond progress bars.

One pipeline for every task (`tasks.Task`): the task's main pass (an evaluation) -> the registry's
checks for that task (`list[Finding]`) -> the run facts and the ranked causes with their remedies
(`causes.rank` on the task's catalogue) -> the verdict -> `Diagnosis`. The gate is applied afterwards
(`Diagnosis.apply_gate`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._cache import model_fingerprint
from ._dist import rank_world
from ._progress import progress
from .causes import rank, verdict
from .checks.base import Finding, get_check, list_checks, run_check
from .config import TRAIN_SAMPLES, DiagnoseConfig
from .convention import KDConvention
from .data import DataBundle
from .diagnosis import Diagnosis
from .engine import pick_device
from .errors import UserError
from .flags import resolve
from .tasks import Task, get_task

__all__ = ["Diagnosis", "RunContext", "diagnose", "diagnose_bundle"]
LEGACY_CONVENTION = ("alpha", "alpha_on", "temperature", "t2", "kd_reduction", "teacher_top_k", "kd_dtype")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunContext:
    """What a task's main pass needs besides the loaders: the config, device, the models as they run
    (placed, maybe compiled), the progress display, the teacher cache (directory, teacher id)."""

    config: DiagnoseConfig
    device: torch.device
    models: tuple[nn.Module, nn.Module]
    bar: object
    teacher_cache: tuple[str, str] | None = None
    channels_last: bool = False
    teacher_spec: str = "teacher"
    student_spec: str = "student"
    debug: bool = False


def diagnose(
    teacher: nn.Module,
    student: nn.Module,
    train: Iterable,
    val: Iterable,
    *,
    task: str | Task = "classification",
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
    show_progress: bool | str = False,
    channels_last: bool = False,
    compile: bool = False,
    teacher_cache: str | Path | None = None,
    teacher_spec: str = "teacher",
    student_spec: str = "student",
    debug: bool = False,
    config: DiagnoseConfig | None = None,
    **legacy,
) -> Diagnosis:
    """Diagnose a teacher-student pair: models and loaders in, a Diagnosis out (`.save(out_dir)` writes
    results.json and the reports).

    `teacher`, `student`: nn.Modules returning [B, classes] logits, or [B, L, V] under
    task="causal-lm" (or a tasks.Task such as CausalLMTask with the tokenizers' facts); `train`, `val`:
    iterables of (inputs, targets) or dict batches (causal LMs: input_ids, attention_mask, labels);
    `train_eval`: the training data under inference transforms. `convention`: the stated KD objective
    (default (1-0.7)*CE + 0.7*T²*KL at T=4; the older alpha=, alpha_on=, temperature=, t2=,
    kd_reduction=, teacher_top_k=, kd_dtype= keywords still work). `limit` caps every split (causal
    LMs: sequences); `train_samples` draws a seeded train sample (None: all), `val_samples` likewise;
    `quick` shrinks every probe budget; `checks` picks ids (default: the task's all); `compile`
    torch.compiles both models; `teacher_cache` is a directory that lets a second student against the
    same teacher and data skip the teacher's pass. The README's Python API section has an example."""
    t = get_task(task, num_classes=num_classes, class_names=class_names)
    run_opts = dict(device=device, limit=limit, train_samples=train_samples, val_samples=val_samples)
    run_opts.update(seed=seed, quick=quick, save_logits=save_logits)
    cfg = config or DiagnoseConfig(convention=convention or _legacy_convention(legacy, t.name), **run_opts)
    start = time.perf_counter()
    loaders = {"train": train, "val": val, **({"train_eval": train_eval} if train_eval is not None else {})}
    options = (teacher_cache, channels_last, compile, teacher_spec)
    with progress(show_progress) as bar, _placed(teacher, student, cfg, options) as (dev, models, t_id):
        cache = (str(teacher_cache), t_id) if teacher_cache is not None else None
        ctx = RunContext(cfg, dev, models, bar, cache, channels_last, teacher_spec, student_spec, debug)
        ev = t.evaluate(teacher, student, loaders, ctx)
        findings = _run_checks(ev, t.name, checks, bar, debug) if rank_world()[0] == 0 else []  # rank 0
    found, run = [f.to_dict() for f in findings], t.run_metadata(ev)
    causes = rank(found, run, name=t.catalogue, context=t.remedy_context(found, run))
    calm = lambda gap: t.calm_sentence(ev, found, causes, gap)  # noqa: E731
    return Diagnosis.from_evaluation(
        t, ev, run, findings, causes, verdict(found, causes, t.catalogue, calm), start
    )


def _legacy_convention(legacy: dict, task: str) -> KDConvention:
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
        task=task,
        top_k=legacy.get("teacher_top_k"),
        kd_dtype=legacy.get("kd_dtype"),
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
    if not getattr(teacher, "hf_device_map", None):  # a teacher spread over devices stays where it is
        teacher.to(dev)
    teacher.eval()
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


def _run_checks(ev, task: str, checks: Iterable[str] | None, bar, debug: bool) -> list[Finding]:
    known = list_checks(task)
    wanted = list(checks) if checks is not None else known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UserError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(known)}")
    findings = []
    progress_task = bar.add_task("running checks", total=len(wanted))
    for cid in wanted:
        bar.update(progress_task, description=f"check {cid}")
        _seed_everything(ev.config.seed)
        findings.append(run_check(get_check(cid, task), ev, debug=debug))
        bar.advance(progress_task)
    bar.remove_task(progress_task)
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
