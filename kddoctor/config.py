"""Run configuration: every default carries its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from .convention import KDConvention
from .errors import check_int, check_number  # noqa: F401  (re-exported)

MAX_SEED = 2**32 - 1  # numpy's seed range


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

    # Hinton-style default: (1-0.7)*CE + 0.7*T²*KL at T=4, batchmean (see convention.py)
    convention: KDConvention = field(default_factory=KDConvention)
    device: str = "auto"
    batch_size: int = 256  # evaluation batch size for loaders we build ourselves
    limit: int | None = None  # max samples per split
    seed: int = 0
    quick: bool = False
    save_logits: bool = False
    budgets: Budgets = field(default_factory=Budgets)

    def __post_init__(self) -> None:
        if self.limit is not None:
            check_int("--limit", self.limit, 1)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--seed", self.seed, 0, MAX_SEED)
        if self.quick and self.budgets == Budgets():
            self.budgets = Budgets.quick()
