"""From CLI arguments (SPECs, checkpoint paths, FACTORY) to a Diagnosis."""

from __future__ import annotations

from pathlib import Path

from .api import Diagnosis, diagnose_bundle
from .config import DiagnoseConfig
from .data import image_folder, load_factory, normalize_inputs, parse_data_args
from .errors import UserError
from .models import infer_num_classes, load_model, load_state_dict, spec_num_classes


def explicit_num_classes(flag: int | None, teacher: str, student: str) -> int | None:
    """--num-classes and a timm SPEC's `?num_classes=` state the class count alike; they must agree."""
    stated = {f"--num-classes {flag}": flag} if flag is not None else {}
    for role, spec in (("teacher", teacher), ("student", student)):
        n = spec_num_classes(spec)
        if n is not None:
            stated[f"--{role} {spec}"] = n
    if len(set(stated.values())) > 1:
        raise UserError(f"conflicting class counts: {', '.join(stated)}; state one count")
    return next(iter(stated.values()), None)


def resolve_num_classes(explicit: int | None, sds: dict[str, dict | None], data_nc: int | None) -> int | None:
    """--num-classes, else the checkpoints' classifiers (which must agree), else the data factory's."""
    inferred = {role: infer_num_classes(sd) for role, sd in sds.items() if sd is not None}
    inferred = {k: v for k, v in inferred.items() if v is not None}
    if explicit is not None:
        if explicit < 1:
            raise UserError(f"--num-classes must be >= 1, got {explicit}")
        return explicit
    if len(set(inferred.values())) > 1:
        raise UserError(
            "teacher and student checkpoints disagree on the class count ("
            + ", ".join(f"{k}: {v}" for k, v in inferred.items())
            + "); pass --num-classes"
        )
    if inferred:
        n = next(iter(inferred.values()))
        if data_nc is not None and data_nc != n:
            raise UserError(
                f"the checkpoints have {n} classes but the data factory says {data_nc}; "
                "check the data or pass --num-classes"
            )
        return n
    return data_nc


def diagnose_specs(
    teacher: str,
    student: str,
    *,
    teacher_ckpt: Path | None,
    student_ckpt: Path | None,
    data: str | None,
    data_dir: Path | None,
    data_args: list[str],
    num_classes: int | None,
    config: DiagnoseConfig,
    teacher_ema: bool = False,
    student_ema: bool = False,
    trust: bool = False,
    show_progress: bool = True,
    debug: bool = False,
    teacher_cache: Path | None = None,
    compile: bool = False,
) -> Diagnosis:
    explicit = explicit_num_classes(num_classes, teacher, student)
    sds = {
        "teacher": load_state_dict(teacher_ckpt, role="teacher", ema=teacher_ema, trust=trust)
        if teacher_ckpt
        else None,
        "student": load_state_dict(student_ckpt, role="student", ema=student_ema, trust=trust)
        if student_ckpt
        else None,
    }
    bundle = load_factory(data, parse_data_args(data_args), seed=config.seed) if data else None
    nc = resolve_num_classes(explicit, sds, bundle.num_classes if bundle else None)
    if nc is None and data_dir is None:
        raise UserError("cannot tell the number of classes: pass --num-classes N (or a checkpoint)")
    if nc is None and data_dir is not None:
        nc = (
            sum(1 for p in (Path(data_dir) / "train").iterdir() if p.is_dir())
            if (Path(data_dir) / "train").is_dir()
            else None
        )
    t_model = load_model(
        teacher,
        str(teacher_ckpt) if teacher_ckpt else None,
        role="teacher",
        num_classes=nc,
        state_dict=sds["teacher"],
    )
    s_model = load_model(
        student,
        str(student_ckpt) if student_ckpt else None,
        role="student",
        num_classes=nc,
        state_dict=sds["student"],
    )
    if bundle is None:
        bundle = image_folder(
            data_dir,
            s_model,
            teacher=t_model,
            batch_size=config.batch_size,
            pin_memory=config.device.startswith("cuda") or config.device == "auto",
        )
        if nc is not None and bundle.num_classes != nc:
            raise UserError(
                f"--data-dir has {bundle.num_classes} class folders but the models have {nc} classes"
            )
    t_model, s_model = normalize_inputs(bundle, t_model, s_model)
    return diagnose_bundle(
        t_model,
        s_model,
        bundle,
        config=config,
        num_classes=nc,
        teacher_spec=teacher,
        student_spec=student,
        show_progress=show_progress,
        debug=debug,
        teacher_cache=teacher_cache,
        compile=compile,
        channels_last=True,  # applied on CUDA only, where it speeds up convolutions
    )
