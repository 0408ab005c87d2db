"""Run configuration: every default carries its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from .convention import KDConvention
from .errors import UserError, check_int, check_number

MAX_SEED = 2**32 - 1  # numpy's seed range


@dataclass
class Budgets:
    """Sample, step and time budgets for the checks that need more than the main pass.

    Steps and samples never scale with the data set. Each fine-tuning probe also stops at a time
    budget (whichever comes first, and says which): `probe_seconds`, or when None the larger of
    `probe_floor_s` and `probe_share` of the main pass's wall time, so a slow device probes for
    proportionally longer and a huge split does not buy longer probes than its sample does.
    """

    feature_rows: int = 2048  # per split: penultimate features + logits kept for probes
    probe_samples: int = 512  # inputs cached per split for the fine-tuning probes
    fit_steps: int = 64  # capacity fit probe: pure-KD fine-tuning steps
    sweep_steps: int = 20  # alpha/T sweep: fine-tuning steps per setting (9 settings)
    grad_batches: int = 4  # gradient balance: train batches averaged
    bn_batches: int = 16  # BN recalibration: forward passes over cached train inputs
    probe_batch: int = 32  # batch size of every fine-tuning step
    eval_batch: int = 256  # batch size of the probes' no-grad evaluations (cheaper per sample)
    probe_seconds: float | None = None  # a fixed time budget per probe (None: scaled as below)
    probe_floor_s: float = 3.0  # never less (a probe's step budget on digits takes well under 0.5 s)
    probe_share: float = 0.1  # of the main pass's wall time, per probe (3 probes: 0.3x the pass)
    timed: bool = True  # --quick: steps only (small and deterministic), unless probe_seconds is set

    def probe_budget(self, main_pass_seconds: float) -> float | None:
        """Seconds one fine-tuning probe may run (None: no time budget, the steps alone)."""
        if self.probe_seconds is not None:
            return self.probe_seconds
        if not self.timed:
            return None
        return max(self.probe_floor_s, self.probe_share * main_pass_seconds)

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
            timed=False,
        )


TRAIN_SAMPLES = 50_000  # the train side's default sample (bench/RESULTS.md: the convergence curve)
# causal LMs: sequences. At SEQUENCE_TOKENS_Z = 16 independent tokens per sequence that is 65,536
# effective tokens, the widest 95 % interval of a token rate +-0.38 points (images: +-0.44 at 50,000)
LM_TRAIN_SEQUENCES = 4096


@dataclass
class DiagnoseConfig:
    """How the student was trained (as the user states it) and how to run the diagnosis."""

    # Hinton-style default: (1-0.7)*CE + 0.7*T²*KL at T=4, batchmean (see convention.py)
    convention: KDConvention = field(default_factory=KDConvention)
    device: str = "auto"
    batch_size: int = 256  # evaluation batch size for loaders we build ourselves
    limit: int | None = None  # max samples per split (caps the two below)
    train_samples: int | None = TRAIN_SAMPLES  # train side: a seeded stratified sample (None: all)
    val_samples: int | None = None  # val: complete by default (None: all)
    seed: int = 0
    quick: bool = False
    save_logits: bool = False
    budgets: Budgets = field(default_factory=Budgets)

    def __post_init__(self) -> None:
        for flag, value in (
            ("--limit", self.limit),
            ("--train-samples", self.train_samples),
            ("--val-samples", self.val_samples),
        ):
            if value is not None:
                check_int(flag, value, 1)
        if (
            self.budgets.probe_seconds is not None
            and check_number("--probe-seconds", self.budgets.probe_seconds) <= 0
        ):
            raise UserError(f"--probe-seconds must be > 0, got {self.budgets.probe_seconds}")
        check_int("--batch-size", self.batch_size, 1)
        check_int("--seed", self.seed, 0, MAX_SEED)
        if self.quick and self.budgets == Budgets():
            self.budgets = Budgets.quick()

    def split_limit(self, split: str, default_train: int = TRAIN_SAMPLES) -> tuple[int | None, bool]:
        """How many samples of a split to read, and whether the user asked for that number (a default
        train sample is never taken in a way that could bias it, see engine.limit_loader).
        `default_train`: the task's default train sample (causal LMs: LM_TRAIN_SEQUENCES sequences)."""
        own = self.val_samples if split == "val" else self.train_samples
        if split != "val" and own == TRAIN_SAMPLES:
            own = default_train
        caps = [v for v in (self.limit, own) if v is not None]
        explicit = self.limit is not None or (split != "val" and self.train_samples != TRAIN_SAMPLES)
        return (min(caps) if caps else None), explicit or split == "val"
