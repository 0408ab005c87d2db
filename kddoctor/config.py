"""Run configuration: every default carries its reason."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .errors import UserError

ALPHA_ON = ("kd", "ce")
KD_REDUCTIONS = ("batchmean", "mean", "sum")
MAX_SEED = 2**32 - 1  # numpy's seed range


def check_number(flag: str, value: object) -> float:
    """A real, finite number (NaN and Inf would only crash the report at the very end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


def check_int(flag: str, value: object, low: int, high: float = math.inf) -> int:
    """An integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise UserError(f"{flag} must be an integer {bound}, got {value!r}")
    return int(value)


@dataclass
class Budgets:
    """Fixed sample/step budgets for the checks that need more than the main pass.

    They never scale with the data set, so the full diagnose stays bounded.
    """

    feature_rows: int = 2048  # per split: penultimate features + logits kept for probes
    probe_samples: int = 512  # inputs cached per split for the fine-tuning probes
    fit_steps: int = 64  # capacity fit probe: pure-KD fine-tuning steps
    sweep_steps: int = 20  # alpha/T sweep: fine-tuning steps per setting (9 settings)
    grad_batches: int = 4  # gradient balance: train batches averaged
    bn_batches: int = 16  # BN recalibration: forward passes over cached train inputs
    probe_batch: int = 32  # batch size of every fine-tuning step
    eval_batch: int = 256  # batch size of the probes' no-grad evaluations (cheaper per sample)

    @classmethod
    def quick(cls) -> Budgets:
        return cls(
            feature_rows=512,
            probe_samples=256,
            fit_steps=48,
            sweep_steps=16,
            grad_batches=2,
            bn_batches=8,
            probe_batch=32,
            eval_batch=256,
        )


@dataclass
class DiagnoseConfig:
    """How the student was trained (as the user states it) and how to run the diagnosis."""

    alpha: float = 0.7  # Hinton-style default: mostly KD
    alpha_on: str = "kd"  # loss = (1-alpha)*CE + alpha*KD
    temperature: float = 4.0  # the most common KD temperature in the literature
    t2: bool = True  # Hinton et al. scale KD by T^2 so its gradients keep their size
    kd_reduction: str = "batchmean"  # the only reduction that is a true per-sample KL
    device: str = "auto"
    batch_size: int = 256  # evaluation batch size for loaders we build ourselves
    limit: int | None = None  # max samples per split
    seed: int = 0
    quick: bool = False
    save_logits: bool = False
    budgets: Budgets = field(default_factory=Budgets)

    def __post_init__(self) -> None:
        if not 0.0 <= check_number("--alpha", self.alpha) <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.alpha_on not in ALPHA_ON:
            raise UserError(f"--alpha-on must be one of {', '.join(ALPHA_ON)}, got {self.alpha_on!r}")
        if check_number("--temperature", self.temperature) <= 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.kd_reduction not in KD_REDUCTIONS:
            raise UserError(
                f"--kd-reduction must be one of {', '.join(KD_REDUCTIONS)}, got {self.kd_reduction!r}"
            )
        if self.limit is not None:
            check_int("--limit", self.limit, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--seed", self.seed, 0, MAX_SEED)
        if self.quick and self.budgets == Budgets():
            self.budgets = Budgets.quick()
