"""The image zoo's catalogue: how each student is built and distilled (`Recipe`), and every scenario
with the cause it plants and the counterfactual that undoes only that factor (`Scenario`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from ..convention import KDConvention
from . import demo
from . import frameworks as _frameworks


@dataclass(frozen=True)
class Recipe:
    """How a student is built and distilled (and how its data is served)."""

    student: str = "cnn"  # cnn | mlp
    size: int = 24  # cnn width or mlp hidden units
    subset: int | None = None  # distillation set: first N training digits (None: all 1,437)
    epochs: int = 40
    alpha: float = 0.7
    alpha_on: str = "kd"
    temperature: float = 4.0
    t2: bool = True
    reduction: str = "batchmean"
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_noise: float = 0.0
    bn_momentum: float | None = 0.1  # 0.0 freezes BatchNorm running statistics at their init values
    val_normalization: str = "standard"  # standard | none | div255 (see demo.VAL_TRANSFORMS)
    augment: bool = False  # random 1-pixel shifts while distilling (the same view for both models)
    student_norm: str = "standard"  # raw: the student learned on [0, 1] pixels (expects mean 0, std 1)
    loader_augment: int = 0  # the diagnosis train loader shifts each batch by up to N pixels
    framework: str | None = None  # a KD codebase's loss and checkpoint layout (kddoctor.zoo.frameworks)
    fw_weights: tuple = ()  # that codebase's loss weights, as (name, value) pairs
    claims: tuple = ()  # what the user states instead of what the code computed, as (field, value) pairs

    def trained(self) -> KDConvention:
        """The KD convention the training code computed."""
        return KDConvention.from_alpha(
            self.alpha, self.alpha_on, temperature=self.temperature, t2=self.t2, reduction=self.reduction
        )

    def stated(self) -> KDConvention:
        """The KD convention the user states to kddoctor: what the code computed (from the codebase's own
        weights, if any), unless `claims` says they state what they meant instead."""
        if self.framework is not None:
            return _frameworks.FRAMEWORKS[self.framework].kddoctor_flags(**dict(self.fw_weights))[
                "convention"
            ]
        meant = dict(self.claims)
        if not meant:
            return self.trained()
        fields = {
            k: meant.get(k, getattr(self, k)) for k in ("alpha", "alpha_on", "temperature", "t2", "reduction")
        }
        return KDConvention.from_alpha(fields.pop("alpha"), fields.pop("alpha_on"), **fields)

    def model(self) -> nn.Module:
        return (
            demo.student_cnn(width=self.size) if self.student == "cnn" else demo.student_mlp(hidden=self.size)
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str | tuple[str, ...] | None  # the planted cause id(s); None for a healthy pair
    description: str
    recipe: Recipe
    fix: dict = field(default_factory=dict)  # recipe fields that undo only the planted factor
    dose: str | None = None  # mild | severe, for pathologies planted at two strengths
    family: str = ""  # the pathology (shared by its doses)

    def fixed(self) -> Scenario:
        return dataclasses.replace(
            self,
            name=f"{self.name}+fix",
            expected=None,
            recipe=dataclasses.replace(self.recipe, **self.fix),
            fix={},
            dose=None,
        )

    @property
    def causes(self) -> tuple[str, ...]:
        return (
            ()
            if self.expected is None
            else (self.expected,)
            if isinstance(self.expected, str)
            else self.expected
        )


R = Recipe
NOISY = dict(subset=600, label_noise=0.3, epochs=60)  # noisy labels: where the KD weight matters most


def _doses(family: str, cause: str, description: str, mild: Recipe, severe: Recipe, fix: dict) -> list:
    return [
        Scenario(f"{family}_{d}", cause, f"{description} ({d})", r, fix, d, family)
        for d, r in (("mild", mild), ("severe", severe))
    ]


SCENARIOS: list[Scenario] = [
    Scenario("healthy_cnn", None, "CNN student distilled on all training digits with weight decay", R()),
    Scenario(
        "healthy_mlp",
        None,
        "MLP student distilled on all training digits with shift augmentation",
        R(student="mlp", size=256, augment=True, epochs=60),
    ),
    Scenario(
        "healthy_augmenting_loader",
        None,
        "healthy CNN student distilled with 1-pixel shifts; the diagnosis train loader augments the same way",
        R(augment=True, loader_augment=1),
    ),
    *_doses(
        "overfit_small_subset",
        "overfitting",
        "CNN student distilled on few digits for many epochs, no weight decay",
        R(subset=400, epochs=100, weight_decay=0.0),
        R(subset=240, epochs=150, weight_decay=0.0),
        dict(subset=None, epochs=40),
    ),
    *_doses(
        "overfit_mlp_labels",
        "overfitting",
        "wide MLP on few digits, label-heavy loss, no regularization",
        R(student="mlp", size=512, subset=350, epochs=200, alpha=0.3, weight_decay=0.0),
        R(student="mlp", size=512, subset=200, epochs=250, alpha=0.3, weight_decay=0.0),
        dict(subset=None, epochs=40),
    ),
    *_doses(
        "mismatch_val_input",
        "distribution_mismatch",
        "the val transform differs from train: mild drops the Normalize train used; severe scales raw "
        "pixels by 1/255 instead of 1/16 (the teacher fails too)",
        R(val_normalization="none"),
        R(val_normalization="div255"),
        dict(val_normalization="standard"),
    ),
    *_doses(
        "mismatch_frozen_bn_stats",
        "distribution_mismatch",
        "BatchNorm running statistics (almost) never updated during training",
        R(bn_momentum=0.002),
        R(bn_momentum=0.0),
        dict(bn_momentum=0.1),
    ),
    Scenario(
        "mismatch_norm_conflict",
        "distribution_mismatch",
        "a student that expects [0, 1] inputs (MobileViT-style) is fed the teacher's normalized tensor",
        R(student_norm="raw"),
        dict(student_norm="standard"),
        family="mismatch_norm_conflict",
    ),
    *_doses(
        "alpha_reduction",
        "alpha_imbalance",
        "the KD term shrinks: mild kl_div(reduction='mean') at alpha 0.7 (1/10), severe also without T² "
        "at alpha 0.9 (1/160); "
        "labels are 30% noisy",
        R(alpha=0.7, reduction="mean", **NOISY),
        R(alpha=0.9, reduction="mean", t2=False, **NOISY),
        dict(reduction="batchmean", t2=True),
    ),
    *_doses(
        "alpha_on_ce_heavy",
        "alpha_imbalance",
        "alpha on the CE term (KD weight 0.25 mild, 0.1 severe); labels are 30% noisy",
        R(alpha=0.75, alpha_on="ce", **NOISY),
        R(alpha=0.9, alpha_on="ce", **NOISY),
        dict(alpha=0.1),
    ),
    *_doses(
        "capacity_tiny_mlp",
        "insufficient_capacity",
        "MLP student with 8 (mild) or 4 (severe) hidden units",
        R(student="mlp", size=8, epochs=60),
        R(student="mlp", size=4, epochs=60),
        dict(size=256),
    ),
    *_doses(
        "capacity_tiny_cnn",
        "insufficient_capacity",
        "CNN student with 2-4 (mild) or 1-2 (severe) channels",
        R(size=2, epochs=60),
        R(size=1, epochs=60),
        dict(size=24),
    ),
    *_doses(
        "undertrained_epochs",
        "optimization",
        "CNN student stopped after 3 (mild) or 1 (severe) epochs",
        R(epochs=3),
        R(epochs=1),
        dict(epochs=40),
    ),
    *_doses(
        "undertrained_low_lr",
        "optimization",
        "CNN student trained with a learning rate 100x (mild) or 300x (severe) too small",
        R(lr=3e-5, epochs=25),
        R(lr=1e-5, epochs=25),
        dict(lr=3e-3),
    ),
    Scenario(
        "mix_overfit_val_input",
        ("overfitting", "distribution_mismatch"),
        "two causes: a student distilled on 240 digits without weight decay, and a val transform that "
        "normalizes with other statistics (mean 0.5, std 0.5)",
        R(subset=240, epochs=150, weight_decay=0.0, val_normalization="wrongstats"),
        dict(subset=None, epochs=40, weight_decay=5e-4, val_normalization="standard"),
        family="mix_overfit_val_input",
    ),
    Scenario(
        "mix_capacity_val_input",
        ("insufficient_capacity", "distribution_mismatch"),
        "two causes: an MLP student with 6 hidden units, and a val transform that normalizes with other "
        "statistics (mean 0.5, std 0.5)",
        R(student="mlp", size=6, epochs=60, val_normalization="wrongstats"),
        dict(size=256, val_normalization="standard"),
        family="mix_capacity_val_input",
    ),
]
FRAMEWORK_SCENARIOS = [
    Scenario(
        "fw_torchdistill_ce_heavy",
        "alpha_imbalance",
        "torchdistill KDLoss alpha=0.9 (CE), beta=0.1 (KD), T=4 on 30% noisy labels; saved by save_ckpt",
        R(
            framework="torchdistill",
            fw_weights=(("alpha", 0.9), ("beta", 0.1), ("temperature", 4.0)),
            **NOISY,
        ),
        dict(fw_weights=(("alpha", 0.1), ("beta", 0.9), ("temperature", 4.0))),
        family="fw_torchdistill_ce_heavy",
    ),
    Scenario(
        "fw_mdistiller_healthy",
        None,
        "mdistiller KD with its defaults (CE_WEIGHT 0.1, KD_WEIGHT 0.9, T=4); the DataParallel distiller "
        "checkpoint's student keys",
        R(framework="mdistiller", fw_weights=(("ce_weight", 0.1), ("kd_weight", 0.9), ("temperature", 4.0))),
    ),
    Scenario(
        "fw_timm_healthy",
        None,
        "timm LogitDistillationTask (task 0.5, distill 0.5, T=4, no smoothing); a CheckpointSaver file",
        R(
            framework="timm",
            fw_weights=(
                ("task_loss_weight", 0.5),
                ("distill_loss_weight", 0.5),
                ("temperature", 4.0),
                ("smoothing", 0.0),
            ),
        ),
    ),
    Scenario(
        "fw_repdistiller_undertrained",
        "optimization",
        "RepDistiller -r 0.1 -a 0.9 -b 0 --kd_T 4, stopped after 2 epochs; a {model}_best.pth file",
        R(
            framework="RepDistiller",
            fw_weights=(("gamma", 0.1), ("alpha", 0.9), ("beta", 0.0), ("temperature", 4.0)),
            epochs=2,
        ),
        dict(epochs=40),
        family="fw_repdistiller_undertrained",
    ),
]
# The user states the loss they meant (alpha 0.7 on KD, T 4 with T², batchmean); their code computed
# another. Labels 30% noisy, so the KD term's weight shows in val accuracy. The fix: the code computes
# what they state.
MEANT = (("alpha", 0.7), ("alpha_on", "kd"), ("t2", True), ("reduction", "batchmean"))
UNSTATED_SCENARIOS = [
    Scenario(
        "unstated_missing_t2",
        "alpha_imbalance",
        "the code drops T² at T 4 (the KD term 16x weaker); the user states the loss with T²",
        R(alpha=0.7, t2=False, claims=MEANT, **NOISY),
        dict(t2=True),
        family="unstated_missing_t2",
    ),
    Scenario(
        "unstated_alpha_on_ce",
        "alpha_imbalance",
        "the code puts alpha 0.7 on the CE term; the user states alpha 0.7 on KD",
        R(alpha=0.7, alpha_on="ce", claims=MEANT, **NOISY),
        dict(alpha_on="kd"),
        family="unstated_alpha_on_ce",
    ),
    Scenario(
        "unstated_mean_reduction",
        "alpha_imbalance",
        "the code reduces the KL with 'mean' over [B, C] (divided by the 10 classes too); the user states "
        "batchmean",
        R(alpha=0.7, reduction="mean", claims=MEANT, **NOISY),
        dict(reduction="batchmean"),
        family="unstated_mean_reduction",
    ),
]
SCENARIOS += FRAMEWORK_SCENARIOS + UNSTATED_SCENARIOS
DRAWS = {0: "tuning", 1: "held-back"}  # draw 1: another train/val split, other seeds, other subsets


def get(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    if name.endswith("+fix"):
        return get(name.removesuffix("+fix")).fixed()
    raise KeyError(name)
