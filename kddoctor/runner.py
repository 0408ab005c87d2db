"""From CLI arguments (SPECs, checkpoint paths, FACTORY) to a Diagnosis."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .api import Diagnosis, diagnose_bundle
from .config import TRAIN_SAMPLES, DiagnoseConfig, check_int
from .data import load_factory, parse_data_args
from .errors import UserError
from .flags import resolve
from .image_folder import image_folder, normalize_inputs
from .models import infer_num_classes, load_model, load_state_dict, spec_num_classes
from .tasks import TASKS


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


def _lm_spec(spec: str) -> bool:
    """An hf: directory or a topk: capture: a causal LM whatever --task says."""
    return spec.startswith(("hf:", "topk:"))


def run_name(student: str, teacher: str) -> str:
    stem = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s.split(":")[-1].split("?")[0])[:40] or "model"  # noqa: E731
    return f"{stem(student)}_vs_{stem(teacher)}"


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


def probe_outputs(out: Path | None, junit: Path | None) -> None:
    """--out and --junit are checked before the run, not after it."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; choose a directory")
        _probe_dir(out, "--out")
    if junit is not None:
        if junit.is_dir():
            raise UserError(f"--junit {junit} is a directory; name the XML file to write")
        _probe_dir(junit.parent, "--junit", junit)


def sample_size(flag: str, value: str | None, default: int | None) -> int | None:
    """N or 'all' (None: the whole split)."""
    if value is None:
        return default
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{flag} must be a positive integer or 'all', got {value!r}")
    return n


@dataclass(frozen=True)
class DiagnoseArgs:
    """The `kddoctor diagnose` options as the user typed them (None: not given)."""

    teacher: str
    student: str
    teacher_ckpt: Path | None = None
    student_ckpt: Path | None = None
    data: str | None = None
    data_dir: Path | None = None
    data_arg: list[str] | None = None
    num_classes: int | None = None
    alpha: float | None = None
    alpha_on: str | None = None
    ce_weight: float | None = None
    kd_weight: float | None = None
    temperature: float | None = None
    no_t2: bool = False
    kd_reduction: str | None = None
    train_batch_size: int | None = None
    convention: str | None = None
    task: str = "classification"
    teacher_top_k: int | None = None
    kd_dtype: str = "float32"
    divergence: str | None = None
    beta: float | None = None
    lmbda: float | None = None
    top_k_rule: str | None = None
    allow_vocab_truncation: bool = False
    teacher_device_map: str | None = None
    teacher_dtype: str | None = None
    device: str = "auto"
    batch_size: int = 256
    limit: int | None = None
    train_samples: str | None = None
    val_samples: str | None = None
    probe_seconds: float | None = None
    seed: int = 0
    quick: bool = False
    policy: Path | None = None
    junit: Path | None = None
    baseline: Path | None = None
    save_logits: bool = False
    out: Path | None = None
    teacher_ema: bool = False
    student_ema: bool = False
    trust_checkpoint: bool = False
    report_cdn: bool = False
    no_cache: bool = False
    cache_dir: Path | None = None
    compile: bool = False
    quiet: bool = False
    debug: bool = False

    def config(self, device: str) -> DiagnoseConfig:
        """The run configuration; the KD convention resolved from its flags (conflicts: exit 2)."""
        conv = resolve(
            alpha=self.alpha,
            alpha_on=self.alpha_on,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
            no_t2=self.no_t2,
            reduction=self.kd_reduction,
            train_batch_size=self.train_batch_size,
            preset=self.convention,
            task=self.task if self.task in TASKS else "classification",
            top_k=self.teacher_top_k,
            kd_dtype=self.kd_dtype,
            divergence=self.divergence,
            beta=self.beta,
            lmbda=self.lmbda,
            top_k_rule=self.top_k_rule,
        )
        cfg = DiagnoseConfig(
            convention=conv,
            device=device,
            batch_size=self.batch_size,
            limit=self.limit,
            train_samples=sample_size("--train-samples", self.train_samples, TRAIN_SAMPLES),
            val_samples=sample_size("--val-samples", self.val_samples, None),
            seed=self.seed,
            quick=self.quick,
            save_logits=self.save_logits,
        )
        if self.probe_seconds is not None:
            cfg.budgets.probe_seconds = self.probe_seconds
            cfg.__post_init__()  # validates it like every other flag
        return cfg

    def check(self) -> None:
        """Everything that can be refused before any work is."""
        if (self.data is None) == (self.data_dir is None):
            raise UserError("give exactly one of --data FACTORY or --data-dir DIR")
        for p in (self.policy, self.baseline):
            if p is not None and not p.is_file():
                raise UserError(f"{p} not found")
        if self.num_classes is not None:
            check_int("--num-classes", self.num_classes, 1)
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "causal-lm" and self.data is None:
            raise UserError(
                "--task causal-lm needs --data FACTORY (batches of input_ids, attention_mask, labels)"
            )
        if self.task != "causal-lm" and (self.teacher_top_k is not None or self.kd_dtype != "float32"):
            raise UserError("--teacher-top-k and --kd-dtype describe a causal-LM loss: add --task causal-lm")
        for flag, spec in (("--teacher", self.teacher), ("--student", self.student)):
            if self.task != "causal-lm" and _lm_spec(spec):
                raise UserError(f"{flag} {spec} is a causal LM: add --task causal-lm")
        if self.task != "causal-lm" and self.allow_vocab_truncation:
            raise UserError("--allow-vocab-truncation compares causal-LM vocabularies: add --task causal-lm")

    @property
    def target(self) -> Path:
        return self.out or Path("reports") / run_name(self.student, self.teacher)


def _lm_model(role: str, spec: str, ckpt: Path | None, ema: bool, trust: bool, **hf):
    """A causal LM from hf:DIR (transformers, local files only; `hf`: device_map, dtype) or a file/module
    SPEC (+ checkpoint)."""
    from .lm.models import load_hf

    if spec.startswith("hf:"):
        return load_hf(spec, role, trust=trust, **hf)
    if any(v is not None for v in hf.values()):
        raise UserError(f"--{role}-device-map and --{role}-dtype load hf: directories; --{role} is {spec}")
    sd = load_state_dict(ckpt, role=role, ema=ema, trust=trust) if ckpt else None
    return load_model(spec, str(ckpt) if ckpt else None, role=role, num_classes=None, state_dict=sd)


def _lm_models(args: DiagnoseArgs) -> tuple:
    """(teacher, student) of a causal-LM run; a `topk:FILE` teacher is an offline capture read against
    the student's vocabulary."""
    trust = args.trust_checkpoint
    student = _lm_model("student", args.student, args.student_ckpt, args.student_ema, trust)
    if not args.teacher.startswith("topk:"):
        hf = {"device_map": args.teacher_device_map, "dtype": args.teacher_dtype}
        return _lm_model("teacher", args.teacher, args.teacher_ckpt, args.teacher_ema, trust, **hf), student
    from .lm.features import lm_head_of
    from .lm.offline import OfflineTeacher

    if args.teacher_ckpt:
        raise UserError("--teacher-ckpt: a topk: capture holds the teacher's outputs; drop --teacher-ckpt")
    vocab = getattr(getattr(student, "config", None), "vocab_size", None)
    return OfflineTeacher(args.teacher[5:], vocab or lm_head_of(student).out_features), student


def _check_capture_top_k(args: DiagnoseArgs, cfg: DiagnoseConfig, teacher) -> None:
    """An offline capture holds its teacher's top k ids per token only: a stated top-k above k is refused
    before any work (without one, the checks that need the whole distribution are skipped:
    `LMEvaluation.capabilities`)."""
    from .convention_text import top1_support
    from .lm.offline import OfflineTeacher
    from .losses import SUPPORT_RULES

    k = teacher.partial_k if isinstance(teacher, OfflineTeacher) else None
    stated = cfg.convention.top_k
    if k is not None and stated is not None and stated > k:
        raise UserError(
            f"--teacher-top-k {stated}: the capture {args.teacher} holds only the top {k} ids per token; "
            f"state at most {k}, or recapture with k >= {stated}"
        )
    conv = cfg.convention
    if k is not None and stated and conv.top_k_rule in SUPPORT_RULES:
        if top1_support(conv):
            raise UserError(
                f"--teacher {args.teacher}: a top-1 support with the text's token (a JSD or reverse KL on "
                f"TRL's server path) reads the teacher's log-probability of every text token, which a "
                f"top-{k} capture does not hold: diagnose with the teacher model itself"
            )
        if conv.temperature != 1 and conv.top_k_rule == "tail_at_t":
            raise UserError(
                f"--teacher {args.teacher}: a tail bucket at T {conv.temperature:g} holds the teacher's mass "
                "outside its top k at that T, which a capture at T 1 cannot give: diagnose with the teacher "
                "model itself, or at --temperature 1"
            )


def _diagnose_lm_command(args: DiagnoseArgs, cfg: DiagnoseConfig, **run) -> Diagnosis:
    """--task causal-lm: hf:DIR or file/module models, the token-level task (kddoctor.tasks.causal_lm)."""
    from .api import diagnose
    from .lm.models import hf_dir, load_tokenizer, tokenizer_info, vocabulary_text
    from .tasks.causal_lm import CausalLMTask

    for role, spec in (("teacher", args.teacher), ("student", args.student)):
        if spec.startswith("hf:"):  # a bad directory or flag is refused before anything loads
            hf_dir(spec, role)
            if getattr(args, f"{role}_ckpt"):
                raise UserError(f"--{role}-ckpt: an hf: directory holds its own weights; drop --{role}-ckpt")
    models = list(_lm_models(args))
    _check_capture_top_k(args, cfg, models[0])
    bundle = load_factory(args.data, parse_data_args(args.data_arg or []), seed=cfg.seed)
    toks = {"teacher": load_tokenizer(args.teacher), "student": load_tokenizer(args.student)}
    reader = next((t for t in (bundle.tokenizer, toks["student"], toks["teacher"]) if t is not None), None)
    task = CausalLMTask(
        tokenizers={role: tokenizer_info(tok) for role, tok in toks.items()},
        allow_vocab_truncation=args.allow_vocab_truncation,
        vocab_text=vocabulary_text(reader) if reader is not None else None,
    )
    return diagnose(
        *models,
        bundle.splits["train"],
        bundle.splits["val"],
        task=task,
        config=cfg,
        teacher_spec=args.teacher,
        student_spec=args.student,
        **run,
    )


def diagnose_command(args: DiagnoseArgs) -> tuple[Diagnosis | None, Path]:
    """`kddoctor diagnose`: validate, load, diagnose; (None, out) on a torchrun rank other than 0."""
    from ._cache import cache_dir as default_cache
    from ._dist import init_from_env, rank_world
    from ._progress import progress_mode
    from .engine import pick_device

    cfg = args.config(init_from_env(args.device))
    args.check()
    pick_device(cfg.device)  # an unusable --device is refused before any work, like the flags above
    probe_outputs(args.target, args.junit)
    run = {
        "show_progress": progress_mode(args.quiet) if rank_world()[0] == 0 else False,
        "debug": args.debug,
        "teacher_cache": None if args.no_cache else (args.cache_dir or default_cache() / "teacher-outputs"),
        "compile": args.compile,
    }
    if args.task == "causal-lm":
        diag = _diagnose_lm_command(args, cfg, **run)
        return (diag if rank_world()[0] == 0 else None), args.target
    diag = diagnose_specs(
        args.teacher,
        args.student,
        teacher_ckpt=args.teacher_ckpt,
        student_ckpt=args.student_ckpt,
        data=args.data,
        data_dir=args.data_dir,
        data_args=args.data_arg or [],
        num_classes=args.num_classes,
        config=cfg,
        teacher_ema=args.teacher_ema,
        student_ema=args.student_ema,
        trust=args.trust_checkpoint,
        **run,
    )
    return (diag if rank_world()[0] == 0 else None), args.target


def _class_count(explicit: int | None, sds: dict, bundle, data_dir: Path | None) -> int | None:
    """--num-classes, the checkpoints, the factory, else the --data-dir class folders."""
    nc = resolve_num_classes(explicit, sds, bundle.num_classes if bundle else None)
    if nc is None and data_dir is None:
        raise UserError("cannot tell the number of classes: pass --num-classes N (or a checkpoint)")
    if nc is None and (Path(data_dir) / "train").is_dir():
        nc = sum(1 for p in (Path(data_dir) / "train").iterdir() if p.is_dir())
    return nc


def _folder_bundle(data_dir: Path, t_model, s_model, nc: int | None, config: DiagnoseConfig):
    """--data-dir as a DataBundle under the student's timm eval transforms."""
    bundle = image_folder(
        data_dir,
        s_model,
        teacher=t_model,
        batch_size=config.batch_size,
        pin_memory=config.device.startswith("cuda") or config.device == "auto",
    )
    if nc is not None and bundle.num_classes != nc:
        raise UserError(f"--data-dir has {bundle.num_classes} class folders but the models have {nc} classes")
    return bundle


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
    show_progress: bool | str = True,
    debug: bool = False,
    teacher_cache: Path | None = None,
    compile: bool = False,
) -> Diagnosis:
    explicit = explicit_num_classes(num_classes, teacher, student)
    roles = (("teacher", teacher, teacher_ckpt, teacher_ema), ("student", student, student_ckpt, student_ema))
    sds = {
        role: load_state_dict(ckpt, role=role, ema=ema, trust=trust) if ckpt else None
        for role, _, ckpt, ema in roles
    }
    bundle = load_factory(data, parse_data_args(data_args), seed=config.seed) if data else None
    nc = _class_count(explicit, sds, bundle, data_dir)
    t_model, s_model = (
        load_model(spec, str(ckpt) if ckpt else None, role=role, num_classes=nc, state_dict=sds[role])
        for role, spec, ckpt, _ in roles
    )
    if bundle is None:
        bundle = _folder_bundle(data_dir, t_model, s_model, nc, config)
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
