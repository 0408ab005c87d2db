"""Findings, the check registry and the runner that turns exceptions into `error` findings."""

from __future__ import annotations

import enum
import inspect
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Status(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass
class Finding:
    """What one check concluded: a status, one sentence with its numbers, and machine-readable evidence."""

    id: str
    status: Status
    summary: str
    evidence: dict = field(default_factory=dict)
    details: dict = field(
        default_factory=dict
    )  # aggregated plot data for the report (results.json `details`)
    seconds: float = 0.0
    thresholds: dict = field(default_factory=dict)  # the levels it graded against (registry defaults)

    def to_dict(self) -> dict:
        out = {
            "id": self.id,
            "status": self.status.value,
            "summary": self.summary,
            "evidence": jsonable(self.evidence),
        }
        if self.thresholds:
            out["thresholds"] = jsonable(self.thresholds)
        return out


def jsonable(obj: object) -> object:
    """numpy / torch scalars and arrays -> plain JSON values (NaN and Inf -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


class NotMeasured(Exception):
    """A value a check grades could not be measured (NaN): the check is skipped, never passed."""


def grade(
    value: float, warn: float, fail: float, *, higher_is_worse: bool = True, what: str = "a graded value"
) -> Status:
    """Threshold a value into pass/warn/fail; NaN (or None) cannot pass: it raises NotMeasured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise NotMeasured(f"{what} could not be measured (NaN)")
    if not higher_is_worse:
        value, warn, fail = -value, -warn, -fail
    return Status.FAIL if value > fail else Status.WARN if value > warn else Status.PASS


def worst(*statuses: Status) -> Status:
    order = [Status.PASS, Status.SKIPPED, Status.WARN, Status.FAIL, Status.ERROR]
    return max(statuses, key=order.index)


@dataclass(frozen=True)
class CheckSpec:
    id: str
    fn: Callable
    needs: tuple[str, ...]
    title: str
    doc: str
    order: int = 100
    min_samples: tuple[tuple[str, int], ...] = ()  # (split, n): below it the check is skipped
    thresholds: tuple[tuple[str, float], ...] = ()  # the check's keyword defaults (warn/fail levels)
    task: str = "classification"  # the task whose evaluation it reads (one id may serve both tasks)


TASKS = ("classification", "causal-lm")
_REGISTRY: dict[tuple[str, str], CheckSpec] = {}  # (task, check id) -> spec
# check ids of earlier releases, read as today's (results.json files and gate policies keep working)
CHECK_ALIASES = {
    "lm_gap": "generalization_gap",
    "lm_capacity": "capacity_probe",
    "lm_alpha": "alpha_sensitivity",
}


def canonical_check_id(check_id: str) -> str:
    """Today's id of a check named by an earlier release (`lm_gap` -> `generalization_gap`)."""
    return CHECK_ALIASES.get(check_id, check_id)


def register_check(
    check_id: str,
    *,
    needs: tuple[str, ...] = (),
    title: str = "",
    order: int = 100,
    min_samples: dict[str, int] | None = None,
    task: str = "classification",
) -> Callable:
    """Register a check function `fn(evaluation) -> Finding` under `check_id` for one task.

    A concept both tasks share (the generalization gap, calibration, the capacity probe, the loss
    weighting sweep) has one id and a function per task, each reading its task's evaluation.

    `needs` names capabilities of the evaluation (see Evaluation.capabilities); the runner skips
    the check, with the reason, when one is missing. The check never tests for that itself.
    `order` places it in the run (cheap input checks first, fine-tuning probes later).
    `min_samples` ({"train": n, "val": n}) is the evidence a check needs before it may conclude
    anything: with fewer valid samples the runner skips it and says so. The check's keyword-only
    arguments with defaults are its thresholds: the registry records them, results.json and the report
    show them, and a graded value that is NaN makes the check `skipped` (see `grade`).
    """

    if isinstance(needs, str):
        raise TypeError(f"register_check({check_id!r}): needs must be a tuple of names, not a string")
    if task not in TASKS:
        raise ValueError(f"register_check({check_id!r}): task must be one of {TASKS}, got {task!r}")

    def deco(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        params = inspect.signature(fn).parameters.values()
        thresholds = tuple((p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY)
        _REGISTRY[(task, check_id)] = CheckSpec(
            check_id,
            fn,
            tuple(needs),
            title or check_id.replace("_", " "),
            doc[0] if doc else "",
            order,
            tuple(sorted((min_samples or {}).items())),
            thresholds,
            task,
        )
        return fn

    return deco


def list_checks(task: str | None = "classification") -> list[str]:
    """Ids of every check registered for a task, in run order (task=None: every task's, unique)."""
    specs = sorted(all_checks(task), key=lambda s: (s.order, s.id))
    return list(dict.fromkeys(s.id for s in specs))


def all_checks(task: str | None = None) -> list[CheckSpec]:
    """Every registered (task, check) spec; one task's when `task` is given."""
    return [spec for (t, _), spec in _REGISTRY.items() if task is None or t == task]


def get_check(check_id: str, task: str = "classification") -> CheckSpec:
    return _REGISTRY[(task, canonical_check_id(check_id))]


NEED_REASONS = {
    "train_eval": "the data factory returned no 'train_eval' loader",
    "probe_rows": "no train or val sequence counts a token within its first positions",
    "exposure": "no val sequence has 48 attended tokens to prompt and sample from",
    "stated_top_k": "no --teacher-top-k stated (the full distribution was the KD target)",
    "teacher_distribution": "the teacher's whole output distribution is not available",
    "features": "no penultimate features: the model has no nn.Linear classifier to tap",
    "cache": "no inputs were cached for probes",
    "norm_layers": "the student has no BatchNorm or dropout layers",
    "trainable": "the student has no trainable parameters",
}


def _too_few_samples(spec: CheckSpec, ev: object) -> str:
    """The reason a check cannot conclude on this little data ('' when there is enough)."""
    unit = getattr(ev, "unit", "samples")  # causal LMs count tokens
    for split, need in spec.min_samples:
        result = ev.side(split)  # type: ignore[attr-defined]
        have = result.n if result is not None else 0
        if have < need:
            return f"needs at least {need} valid {split} {unit}, has {have}"
    return ""


def run_check(spec: CheckSpec, ev: object, debug: bool = False) -> Finding:
    """Run one check; missing needs -> skipped, an exception -> error (the run goes on)."""
    missing = [n for n in spec.needs if n not in ev.capabilities]  # type: ignore[attr-defined]
    if missing:
        reasons = {**NEED_REASONS, **getattr(ev, "need_reasons", {})}  # a run may say why more exactly
        reason = "; ".join(reasons.get(n, f"needs {n}") for n in missing)
        return Finding(spec.id, Status.SKIPPED, f"skipped: {reason}", {"missing": missing})
    short = _too_few_samples(spec, ev)
    if short:
        return Finding(spec.id, Status.SKIPPED, f"skipped: {short}", {"too_few_samples": short})
    start = time.perf_counter()
    try:
        finding = spec.fn(ev)
    except KeyboardInterrupt:
        raise
    except NotMeasured as e:
        finding = Finding(spec.id, Status.SKIPPED, f"skipped: {e}", {"not_measured": str(e)})
    except Exception as e:  # a broken check never kills the run
        first = (str(e).strip().splitlines() or [""])[0][:200]
        msg = f"{type(e).__name__}: {first}" if first else type(e).__name__
        evidence = {"error": msg, "traceback": traceback.format_exc()}
        if debug:  # --debug: the traceback on stderr too, not only in results.json
            traceback.print_exc()
        finding = Finding(spec.id, Status.ERROR, f"the check failed: {msg}", evidence)
    finding.seconds = time.perf_counter() - start
    finding.thresholds = dict(spec.thresholds)
    return finding
