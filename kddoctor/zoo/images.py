"""The scenario kit: teacher-student pairs on real digits data with one planted pathology each.

Every scenario names the cause it plants and a counterfactual `fix` that changes only the planted
factor; tests and `bench/zoo.py` diagnose both and check that the right cause ranks first and that
the fix closes the gap.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from .._cache import cache_dir
from ..api import Diagnosis, diagnose
from . import demo
from . import digits as _train
from . import frameworks as _frameworks
from .image_catalogue import DRAWS, FRAMEWORK_SCENARIOS, SCENARIOS, Recipe, Scenario, get

__all__ = ["DRAWS", "FRAMEWORK_SCENARIOS", "SCENARIOS", "Recipe", "Scenario", "build_student", "get", "pair"]
__all__ += ["judge", "run"]


def _cfg(mean: tuple, std: tuple) -> dict:
    return {"mean": mean, "std": std, "input_size": (1, 8, 8), "interpolation": "bilinear", "crop_pct": 1.0}


def build_student(recipe: Recipe, teacher: nn.Module, root: Path | None = None, draw: int = 0) -> nn.Module:
    """Distill a student as the recipe says (cached by recipe and draw)."""
    key = demo.recipe_key({**dataclasses.asdict(recipe), "teacher": demo.teacher_key(draw), "draw": draw})
    path = (root or cache_dir()) / "scenarios" / f"{key}.pt"
    torch.manual_seed(1 + 100 * draw)  # the same initial weights every time the recipe is built
    model = recipe.model()
    if recipe.bn_momentum != 0.1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = recipe.bn_momentum
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    _distill(recipe, model, teacher, draw)
    path.parent.mkdir(parents=True, exist_ok=True)
    if recipe.framework is not None:  # written in the codebase's layout, read back as a user's file
        model = _through_checkpoint(recipe, model, teacher, path.with_suffix(".fw"))
    demo.atomic_save(model.state_dict(), path)
    return model.eval()


def _through_checkpoint(recipe: Recipe, model: nn.Module, teacher: nn.Module, folder: Path) -> nn.Module:
    """Save the student as its codebase does and load it back through kddoctor's checkpoint reader."""
    from ..models import fit_state_dict, load_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    fw = _frameworks.FRAMEWORKS[recipe.framework]
    names = {"torchdistill": "ckpt.pt", "mdistiller": "best", "timm": "model_best.pth.tar"}
    target = folder / names.get(recipe.framework, "student_best.pth")
    extras = {"teacher_state": teacher.state_dict()} if recipe.framework == "mdistiller" else {}
    written = fw.save(model.state_dict(), target, epoch=recipe.epochs, **extras)
    fresh = recipe.model()
    sd = load_state_dict(written[0], role="student")
    fit_state_dict(fresh, sd, role="student", source=str(written[0]))
    return fresh


def _distill(recipe: Recipe, model: nn.Module, teacher: nn.Module, draw: int) -> None:
    x, y = demo.digits_train_tensors(draw)
    if recipe.subset:
        x, y = x[: recipe.subset], y[: recipe.subset]
    y = torch.from_numpy(_train.noisy_labels(y.numpy(), recipe.label_noise, draw))
    raw = (lambda b: b * _train.DIGITS_STD + _train.DIGITS_MEAN) if recipe.student_norm == "raw" else None
    _train.distill(
        model,
        copy.deepcopy(teacher),  # the scenario's teacher object stays exactly as it was loaded
        x,
        y,
        epochs=recipe.epochs,
        convention=recipe.trained() if recipe.framework is None else None,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        augment=recipe.augment,
        student_input=raw,
        loss_fn=None
        if recipe.framework is None
        else functools.partial(_frameworks.FRAMEWORKS[recipe.framework].loss, **dict(recipe.fw_weights)),
        seed=1 + 100 * draw,
    )


def pair(scenario: Scenario | str, *, root: Path | None = None, draw: int = 0, **data_kw):
    """(teacher, student, data) of a scenario, as its user would hand them to kddoctor."""
    scn = get(scenario) if isinstance(scenario, str) else scenario
    r = scn.recipe
    _, teacher = demo.build_teacher(root, split_seed=draw)
    student = build_student(r, teacher, root, draw)
    if r.student_norm == "raw":  # only this pair declares its normalization (as timm models do)
        teacher.pretrained_cfg = _cfg((_train.DIGITS_MEAN,), (_train.DIGITS_STD,))
        student.pretrained_cfg = _cfg((0.0,), (1.0,))  # MobileViT-style: pixels in [0, 1]
    data = demo.digits_loaders(
        train_subset=r.subset,
        val_normalization=r.val_normalization,
        label_noise=r.label_noise,
        seed=draw,
        train_augment=r.loader_augment,
        **data_kw,
    )
    return teacher, student, data


def run(
    scenario: Scenario | str,
    *,
    quick: bool = True,
    root: Path | None = None,
    draw: int = 0,
    data_kw=None,
    **kw,
) -> Diagnosis:
    """Build the scenario's pair and diagnose it as its user would (stating their training convention)."""
    scn = get(scenario) if isinstance(scenario, str) else scenario
    r = scn.recipe
    teacher, student, data = pair(scn, root=root, draw=draw, **(data_kw or {}))
    return diagnose(
        teacher,
        student,
        data["train"],
        data["val"],
        train_eval=data.get("train_eval"),
        convention=r.stated(),
        quick=quick,
        class_names=data["class_names"],
        teacher_spec="kddoctor.zoo.demo:teacher_cnn",
        student_spec=f"scenario:{scn.name}",
        seed=draw,
        **kw,
    )


def judge(scn: Scenario, diag: Diagnosis) -> bool:
    """Correct: the planted cause ranks first and is likely (mild doses: first is enough); every cause
    of a mixture is in the top two; a healthy or fixed pair has no likely cause."""
    if not scn.causes:
        return not diag.likely_causes
    top = [c["id"] for c in diag.causes[: len(scn.causes)]]
    if len(scn.causes) > 1:
        return set(top) == set(scn.causes)
    return top[0] == scn.expected and (diag.causes[0]["likely"] or scn.dose == "mild")
