"""The Diagnosis: what a run concluded, as results.json holds it, and how it is written and gated.

`Diagnosis.from_evaluation` is the last stage of `api.diagnose`; `Diagnosis.from_dict` reads a
results.json back (so `kddoctor report` rebuilds the reports from that file alone).
"""

from __future__ import annotations

import io
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._dist import gather_ints, rank_world
from ._io import atomic_write
from ._version import __version__
from .checks.base import Finding, Status, canonical_check_id, jsonable
from .errors import UserError
from .metrics.functional import proportion_intervals

SCHEMA = "kddoctor/results/v1"
EXIT_GATE_FAILED = 1


@dataclass
class Diagnosis:
    """The outcome of one diagnosis: metrics, findings, ranked causes, verdict, gate result."""

    run: dict
    metrics: dict
    checks: list[Finding]
    causes: list[dict]
    gate: dict = field(default_factory=lambda: {"passed": True, "failures": []})
    verdict: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # aggregated plot data for the report
    logits: dict[str, np.ndarray] | None = None

    @classmethod
    def from_evaluation(
        cls, task, ev, run: dict, findings: list[Finding], causes: list[dict], verdict: dict, start: float
    ) -> Diagnosis:
        """The Diagnosis of a finished run (`task`: the tasks.Task that evaluated `ev`; `run`: its
        run_metadata; `start`: the run's perf_counter start)."""
        timings = {**run.get("timings", {}), **{f"check_{f.id}": round(f.seconds, 4) for f in findings}}
        run = {**run, "timings": timings, "seconds": round(time.perf_counter() - start, 3)}
        return cls(
            run=run,
            metrics=task.metrics(ev),
            checks=findings,
            causes=causes,
            verdict=verdict,
            notes=task.notes(ev),
            details={**task.details(ev), "checks": {f.id: f.details for f in findings if f.details}},
            logits=task.logits_saved(ev),
        )

    @classmethod
    def from_dict(cls, doc: dict) -> Diagnosis:
        """A results.json document read back (its `details` carry the report's plot data)."""
        details = doc.get("details") or {}
        plots = {canonical_check_id(k): v for k, v in details.get("checks", {}).items()}
        if plots:  # older releases' LM check ids, read as today's (the report looks them up by id)
            details = {**details, "checks": plots}
        findings = [
            Finding(
                canonical_check_id(c["id"]),
                Status(c["status"]),
                c["summary"],
                c.get("evidence", {}),
                plots.get(canonical_check_id(c["id"]), {}),
                thresholds=c.get("thresholds", {}),
            )
            for c in doc["checks"]
        ]
        return cls(
            run=doc["run"],
            metrics=doc["metrics"],
            checks=findings,
            causes=doc["causes"],
            gate=doc.get("gate") or {"passed": True, "failures": []},
            verdict=doc.get("verdict") or {},
            notes=doc.get("notes") or [],
            details=details,
        )

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
                "details": self.details,
            }
        )

    def finding(self, check_id: str) -> Finding | None:
        return next((f for f in self.checks if f.id == check_id), None)

    @property
    def likely_causes(self) -> list[dict]:
        return [c for c in self.causes if c["likely"]]

    def apply_gate(self, policy, baseline: dict | None = None) -> dict:
        """Apply a gate policy (gate.load_policy) to this diagnosis; the verdict lands in `gate`."""
        from .gate import evaluate

        self.gate = evaluate(self.to_dict(), policy, baseline)
        return self.gate

    @property
    def exit_code(self) -> int:
        """0 when every gate rule held (or no gate was applied), 1 when one failed."""
        return 0 if self.gate.get("passed", True) else EXIT_GATE_FAILED

    def save(self, out_dir: str | Path, *, report: bool = True, cdn: bool = False) -> Path:
        """Write results.json (+ report.html, report.md, logits.npz) atomically into out_dir."""
        from .report import render_html, render_markdown

        out = Path(out_dir)
        files: dict = {
            "results.json": (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode()
        }
        if report:
            files["report.md"] = render_markdown(self).encode()
            files["report.html"] = render_html(self, cdn=cdn).encode()
        if self.logits is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.logits)
            files["logits.npz"] = buf.getvalue()
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out, files)
        except OSError as e:
            raise UserError(f"--out {out} is not writable ({e.strerror}); choose another directory") from e
        return out


def split_metrics(r) -> dict:
    """results.json's metrics block of one image split."""
    keys = ("teacher", "student", "agreement", "kl", "n", "excluded_nonfinite")
    return {**{k: r.metrics[k] for k in keys}, "ci95": proportion_intervals(r.stats)}


def split_details(ev) -> dict:
    """The image report's per-class plot data."""
    return {"per_class": {name: _per_class(r.stats) for name, r in ev.splits.items()}}


def pass_timings(splits: dict) -> dict:
    """Each split's pass time and, when the teacher cache was used, its hits and misses (a timing too:
    a second run differs from the first). `splits`: name -> object or mapping with seconds/teacher_cache."""
    read = lambda r, k: r.get(k) if isinstance(r, dict) else getattr(r, k)  # noqa: E731
    timings = {f"eval_{name}": round(read(r, "seconds"), 4) for name, r in splits.items()}
    caches = {name: read(r, "teacher_cache") for name, r in splits.items() if read(r, "teacher_cache")}
    if caches:
        timings["teacher_cache"] = caches
    return timings


def run_core(ev, conv, classes: int, local_rows: dict) -> dict:
    """The `run` facts every task states: versions, device, models, the KD convention (the user's words
    and the canonical weights), seed, world size and each rank's rows (`local_rows`: split -> rows)."""
    return {
        "kddoctor_version": __version__,
        "torch_version": torch.__version__,
        "device": str(ev.device),
        "teacher": ev.teacher_spec,
        "student": ev.student_spec,
        "alpha": conv.alpha,
        "alpha_on": conv.alpha_on,
        "temperature": conv.temperature,
        "t2": conv.t2,
        "kd_reduction": conv.reduction,
        "convention": conv.to_dict(classes),
        "effective_weights": conv.effective(classes),
        "seed": ev.config.seed,
        "quick": ev.config.quick,
        "world_size": rank_world()[1],
        "rank_samples": {name: gather_ints(rows) for name, rows in local_rows.items()},
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def run_metadata(ev) -> dict:
    """results.json `run` of an image run: the shared facts, the classes, sizes and label notes."""
    conv, splits = ev.config.convention, ev.splits
    run = {
        **run_core(ev, conv, ev.num_classes, {name: r.local_rows for name, r in splits.items()}),
        "num_classes": ev.num_classes,
        "class_names": ev.class_names,
        "n": {name: r.n for name, r in splits.items()},
        "label_notes": sorted({note for r in splits.values() for note in r.label_notes}),
    }
    splits_oom = sum(r.micro_batch_splits for r in splits.values())
    if splits_oom:
        run["micro_batch_splits"] = splits_oom
    run["timings"] = pass_timings(splits)
    return run


def run_notes(ev) -> list[str]:
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
