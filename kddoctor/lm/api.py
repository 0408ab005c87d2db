"""diagnose_lm(): a causal-LM teacher and student over train and val, per counted token.

Metrics only for now: the token-level gap picture (both models' NLL, accuracy and ECE, their
agreement, top-k overlap and KL on train and val) and agreement by position. No LM check runs yet,
so the verdict says that no cause was assessed rather than calling the pair healthy.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable

import torch
from torch import nn

from .._version import __version__
from ..causes import rank
from ..convention import KDConvention
from ..diagnosis import Diagnosis
from ..engine import pick_device
from ..metrics.functional import wilson_interval
from .engine import evaluate_lm

NOTE = (
    "causal-LM run: every metric is per counted token (labels != -100); the causal-LM checks (vocabulary, "
    "mask and reduction parity, precision, exposure bias) are not built yet, so no cause was assessed"
)


def diagnose_lm(
    teacher: nn.Module,
    student: nn.Module,
    train: Iterable,
    val: Iterable,
    *,
    convention: KDConvention | None = None,
    device: str = "auto",
    allow_vocab_truncation: bool = False,
    teacher_spec: str = "teacher",
    student_spec: str = "student",
) -> Diagnosis:
    """Both causal LMs over train and val (batches with input_ids, attention_mask, labels)."""
    start, dev, conv = time.perf_counter(), pick_device(device), convention or KDConvention()
    modes = (teacher.training, student.training)
    teacher.to(dev).eval()
    student.to(dev).eval()
    splits, timings = {}, {}
    try:
        for name, loader in (("train", train), ("val", val)):
            began = time.perf_counter()
            splits[name] = evaluate_lm(
                teacher, student, loader, name=name, device=dev, allow_vocab_truncation=allow_vocab_truncation
            )
            timings[f"eval_{name}"] = round(time.perf_counter() - began, 4)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    run = _run(conv, dev, splits, teacher_spec, student_spec, time.perf_counter() - start)
    run["timings"] = timings
    metrics = {name: _contract_metrics(m) for name, m in splits.items()}
    details = {"lm": {name: _lm_details(m) for name, m in splits.items()}, "per_class": {}, "checks": {}}
    verdict = {
        "kind": "not_assessed",
        "lead": None,
        "sentence": "Not assessed: no causal-LM check ran yet. Token agreement "
        f"{metrics['val']['agreement']:.1%} on val, {metrics['train']['agreement']:.1%} on train; "
        f"KL(t||s) {metrics['val']['kl']:.3f} nats per token on val.",
    }
    return Diagnosis(
        run=run,
        metrics=metrics,
        checks=[],
        causes=rank([], run),
        verdict=verdict,
        notes=[NOTE],
        details=details,
    )


def _contract_metrics(m: dict) -> dict:
    """results.json's metrics block, per counted token, plus the LM extras."""
    n = m["tokens"]
    models = {
        r: {k: m[r][k] for k in ("loss", "acc", "ece", "perplexity", "entropy")}
        for r in ("teacher", "student")
    }
    ci = {f"{r}_acc": wilson_interval(m[r]["acc"] * n, n) for r in ("teacher", "student")}
    ci["agreement"] = wilson_interval(m["agreement"] * n, n)
    return {
        **models,
        "agreement": m["agreement"],
        "kl": m["kl"],
        "top_k_overlap": m["top_k_overlap"],
        "n": n,
        "excluded_nonfinite": 0,
        "ci95": ci,
    }


def _lm_details(m: dict) -> dict:
    return {"agreement_by_position": m["agreement_by_position"], "top_k_overlap": m["top_k_overlap"]}


def _run(conv: KDConvention, dev, splits: dict, teacher: str, student: str, seconds: float) -> dict:
    return {
        "kddoctor_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "task": "causal-lm",
        "teacher": teacher,
        "student": student,
        "alpha": conv.alpha,
        "alpha_on": conv.alpha_on,
        "temperature": conv.temperature,
        "t2": conv.t2,
        "kd_reduction": conv.reduction,
        "convention": conv.to_dict(splits["val"]["vocab"]),  # a 'mean' KL divides by the vocabulary
        "vocab": splits["val"]["vocab"],
        "n": {name: m["tokens"] for name, m in splits.items()},
        "seconds": round(seconds, 3),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
