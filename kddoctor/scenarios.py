"""The scenario kit: teacher-student pairs on real digits data with one planted pathology each.

Every scenario names the cause it plants and a counterfactual `fix` that changes only the planted
factor; tests and `bench/zoo.py` diagnose both and check that the right cause ranks first and that
the fix closes the gap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import _train, demo
from .api import Diagnosis, diagnose


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
    val_normalization: str = "standard"
    augment: bool = False

    def model(self) -> nn.Module:
        return (
            demo.student_cnn(width=self.size) if self.student == "cnn" else demo.student_mlp(hidden=self.size)
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str | None  # the planted cause id; None for a healthy pair
    description: str
    recipe: Recipe
    fix: dict = field(default_factory=dict)  # recipe fields that undo only the planted factor

    def fixed(self) -> Scenario:
        return dataclasses.replace(
            self,
            name=f"{self.name}+fix",
            expected=None,
            recipe=dataclasses.replace(self.recipe, **self.fix),
            fix={},
        )


R = Recipe
NOISY = dict(subset=600, label_noise=0.3, epochs=60)  # noisy labels: where the KD weight matters most
SCENARIOS: list[Scenario] = [
    Scenario("healthy_cnn", None, "CNN student distilled on all training digits with weight decay", R()),
    Scenario(
        "healthy_mlp",
        None,
        "MLP student distilled on all training digits with shift augmentation",
        R(student="mlp", size=256, augment=True, epochs=60),
    ),
    Scenario(
        "overfit_small_subset",
        "overfitting",
        "CNN student distilled on 240 digits for 150 epochs, no weight decay",
        R(subset=240, epochs=150, weight_decay=0.0),
        fix=dict(subset=None, epochs=40),
    ),
    Scenario(
        "overfit_mlp_labels",
        "overfitting",
        "wide MLP on 200 digits, label-heavy loss, no regularization",
        R(student="mlp", size=512, subset=200, epochs=250, alpha=0.3, weight_decay=0.0),
        fix=dict(subset=None, epochs=40),
    ),
    Scenario(
        "mismatch_val_unnormalized",
        "distribution_mismatch",
        "val inputs skip the normalization train used",
        R(val_normalization="none"),
        fix=dict(val_normalization="standard"),
    ),
    Scenario(
        "mismatch_frozen_bn_stats",
        "distribution_mismatch",
        "BatchNorm running statistics never updated during training (momentum 0)",
        R(bn_momentum=0.0),
        fix=dict(bn_momentum=0.1),
    ),
    Scenario(
        "alpha_mean_reduction_no_t2",
        "alpha_imbalance",
        "kl_div(reduction='mean') and no T²: the KD term shrinks 160x; labels are 30% noisy",
        R(alpha=0.9, reduction="mean", t2=False, **NOISY),
        fix=dict(reduction="batchmean", t2=True),
    ),
    Scenario(
        "alpha_on_ce_heavy",
        "alpha_imbalance",
        "alpha=0.9 on the CE term (KD weight 0.1); labels are 30% noisy",
        R(alpha=0.9, alpha_on="ce", **NOISY),
        fix=dict(alpha=0.1),
    ),
    Scenario(
        "capacity_tiny_mlp",
        "insufficient_capacity",
        "MLP student with 4 hidden units",
        R(student="mlp", size=4, epochs=60),
        fix=dict(size=256),
    ),
    Scenario(
        "capacity_tiny_cnn",
        "insufficient_capacity",
        "CNN student with 1 and 2 channels",
        R(size=1, epochs=60),
        fix=dict(size=24),
    ),
    Scenario(
        "undertrained_one_epoch",
        "optimization",
        "CNN student stopped after one epoch",
        R(epochs=1),
        fix=dict(epochs=40),
    ),
    Scenario(
        "undertrained_low_lr",
        "optimization",
        "CNN student trained with a learning rate 300x too small",
        R(lr=1e-5, epochs=15),
        fix=dict(lr=3e-3),
    ),
]


def get(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    if name.endswith("+fix"):
        return get(name.removesuffix("+fix")).fixed()
    raise KeyError(name)


def build_student(recipe: Recipe, teacher: nn.Module, root: Path | None = None) -> nn.Module:
    """Distill a student as the recipe says (cached by recipe)."""
    key = demo.recipe_key({**dataclasses.asdict(recipe), "teacher": demo.TEACHER_KEY})
    path = (root or demo.cache_dir()) / "scenarios" / f"{key}.pt"
    torch.manual_seed(1)  # the same initial weights every time the recipe is built
    model = recipe.model()
    if recipe.bn_momentum != 0.1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = recipe.bn_momentum
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x, y = demo.digits_train_tensors()
    if recipe.subset:
        x, y = x[: recipe.subset], y[: recipe.subset]
    y = torch.from_numpy(_train.noisy_labels(y.numpy(), recipe.label_noise))
    _train.distill(
        model,
        teacher,
        x,
        y,
        epochs=recipe.epochs,
        alpha=recipe.alpha,
        alpha_on=recipe.alpha_on,
        temperature=recipe.temperature,
        t2=recipe.t2,
        reduction=recipe.reduction,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        augment=recipe.augment,
        seed=1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    demo.atomic_save(model.state_dict(), path)
    return model.eval()


def run(scenario: Scenario | str, *, quick: bool = True, root: Path | None = None, **kw) -> Diagnosis:
    """Build the scenario's pair and diagnose it as its user would (stating their training convention)."""
    scn = get(scenario) if isinstance(scenario, str) else scenario
    r = scn.recipe
    _, teacher = demo.build_teacher(root)
    student = build_student(r, teacher, root)
    data = demo.digits_loaders(
        train_subset=r.subset, val_normalization=r.val_normalization, label_noise=r.label_noise
    )
    return diagnose(
        teacher,
        student,
        data["train"],
        data["val"],
        alpha=r.alpha,
        alpha_on=r.alpha_on,
        temperature=r.temperature,
        t2=r.t2,
        kd_reduction=r.reduction,
        quick=quick,
        class_names=data["class_names"],
        teacher_spec="kddoctor.demo:teacher_cnn",
        student_spec=f"scenario:{scn.name}",
        **kw,
    )
