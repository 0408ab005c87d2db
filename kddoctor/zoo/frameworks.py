"""Faithful replicas of how common KD codebases train and save a student (none is a dependency).

Each `Framework` holds the codebase's KD objective (`loss(s_logits, t_logits, targets, **weights)`
under its own parameter names), its checkpoint layout (`save`), the same objective as the
`KDConvention` its user states (`kddoctor_flags(...)["convention"].loss` equals `loss` wherever
`flags["expressible"]`) and a `citation` (repository@commit, file:lines read).

Sources read (loss; checkpoint), full commits in each `citation`:
  yoshitomo-matsubara/torchdistill@3e4373c: torchdistill/losses/mid_level.py:135-189;
      torchdistill/common/main_util.py:351-372
  megvii-research/mdistiller@a08d46f: mdistiller/distillers/KD.py:8-34; mdistiller/engine/trainer.py:127-151
  huggingface/pytorch-image-models@aa4b585: timm/task/distillation.py:290-317,393-397;
      timm/utils/checkpoint_saver.py:89-110
  HobbitLong/RepDistiller@b84f547: distiller_zoo/KD.py:7-17, helper/loops.py:184; train_student.py:313-343
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..convention import PRESETS, KDConvention

Tensor = torch.Tensor
StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class Framework:
    name: str
    loss: Callable[..., Tensor]
    save: Callable[..., list[Path]]
    kddoctor_flags: Callable[..., dict]
    citation: str
    defaults: dict[str, Any]  # the weights of the codebase's reference KD recipe


@dataclass(frozen=True)
class SaveExtras:
    """What every `save(sd, path, *, epoch, **extras)` accepts; each stores what its codebase stores."""

    optimizer_state: dict | None = None  # default: a real SGD's state over sd's parameters
    args: Any = None  # argparse.Namespace where the codebase stores its parsed args
    ema_state: StateDict | None = None  # timm only
    metric: float | None = None  # best/last validation accuracy
    teacher_state: StateDict | None = None  # mdistiller only (its distiller holds the teacher)


def _flags(preset: str, w_ce: float, w_kd: float, temperature: float, **kw: Any) -> dict:
    """The codebase's weights as the `KDConvention` its user states (`--convention PRESET
    --ce-weight W --kd-weight W`): `flags["convention"].loss == loss` wherever `flags["expressible"]`."""
    sums_to_one = math.isclose(w_ce + w_kd, 1.0)
    form = PRESETS[preset].form if sums_to_one else "weights"
    reduction = kw.get("reduction", "batchmean")
    conv = KDConvention(
        ce_weight=float(w_ce),
        kd_weight=float(w_kd),
        temperature=float(temperature),
        reduction=reduction,
        train_batch_size=kw.get("batch_size") if reduction == "sum" else None,
        form=form,
        preset=preset,
    )
    notes = [kw["note"]] if kw.get("note") else []
    if not sums_to_one:
        notes.append(
            f"weights sum to {w_ce + w_kd:g}, not 1: state them as --ce-weight {w_ce:g} --kd-weight {w_kd:g}"
        )
    return {"convention": conv, "expressible": kw.get("expressible", True), "note": "; ".join(notes)}


def _opt(sd: StateDict, x: SaveExtras) -> dict:
    """The optimizer state given, else a real SGD's."""
    return x.optimizer_state if x.optimizer_state is not None else _sgd(sd).state_dict()


def _sgd(sd: StateDict) -> torch.optim.SGD:
    """A real SGD (momentum 0.9) over copies of sd's parameters (not BatchNorm buffers), stepped once."""
    params = [
        torch.nn.Parameter(v.detach().clone())
        for k, v in sd.items()
        if v.is_floating_point() and "running_" not in k
    ]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt


def _acc(metric: float | None) -> Tensor:
    """An accuracy as the CIFAR codebases keep it: a 0-d float tensor (AverageMeter of top-k tensors)."""
    return torch.tensor(float(metric if metric is not None else 0.0))


# --- torchdistill: KDLoss and save_ckpt -----------------------------------------------------------


def _td_loss(
    s: Tensor,
    t: Tensor,
    y: Tensor | None,
    *,
    temperature: float,
    alpha: float | None = None,
    beta: float | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    """KDLoss: alpha*CE + beta*T²*KL, beta default 1-alpha; alpha None/0 or no targets: the bare KL."""
    beta = 1 - alpha if beta is None else beta  # alpha and beta both None: TypeError, as in __init__
    soft = F.kl_div(
        torch.log_softmax(s / temperature, dim=1), torch.softmax(t / temperature, dim=1), reduction=reduction
    )
    if alpha is None or alpha == 0 or y is None:
        return soft
    hard = F.cross_entropy(s, y, reduction="mean" if reduction == "batchmean" else reduction)
    return alpha * hard + beta * (temperature**2) * soft


def _td_flags(
    *,
    temperature: float,
    alpha: float | None = None,
    beta: float | None = None,
    reduction: str = "batchmean",
    batch_size: int = 64,
) -> dict:
    """KDLoss as `--convention torchdistill` (alpha on CE, beta on KD); alpha 0/None is the bare KL,
    which the preset knows (`KDConvention.bare_kl`)."""
    if alpha is None and beta is None:
        raise TypeError("torchdistill KDLoss needs alpha or beta (1 - None fails in its __init__)")
    w_kd = 1 - alpha if beta is None else beta
    if alpha is None or alpha == 0:
        note = "alpha=0/None: torchdistill returns the bare KL (beta and T² dropped)"
        return _flags(
            "torchdistill", 0.0, w_kd, temperature, reduction=reduction, batch_size=batch_size, note=note
        )
    if reduction == "sum":
        note = "reduction='sum' sums the CE over the batch too; kddoctor's CE is a batch mean"
        return _flags(
            "torchdistill",
            alpha,
            w_kd,
            temperature,
            reduction="sum",
            batch_size=batch_size,
            expressible=False,
            note=note,
        )
    return _flags("torchdistill", alpha, w_kd, temperature, reduction=reduction)


def _td_save(sd: StateDict, path: str | Path, *, epoch: int, **extras: Any) -> list[Path]:
    """save_ckpt: {model, optimizer, best_value, lr_scheduler, args}; no epoch, no EMA, no teacher."""
    x, opt = SaveExtras(**extras), _sgd(sd)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[5, 15], gamma=0.1)  # sample config's
    torch.save(
        {
            "model": dict(sd),
            "optimizer": x.optimizer_state if x.optimizer_state is not None else opt.state_dict(),
            "best_value": float(x.metric if x.metric is not None else 0.0),
            "lr_scheduler": sched.state_dict(),
            "args": x.args,
        },
        path,
    )
    return [Path(path)]


# --- mdistiller: KD distiller and BaseTrainer checkpoints -----------------------------------------


def _md_loss(
    s: Tensor,
    t: Tensor,
    y: Tensor,
    *,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    temperature: float = 4.0,
) -> Tensor:
    """KD: CE_WEIGHT*CE + KD_WEIGHT*T²*kl_div(reduction='none').sum(1).mean()."""
    log_pred_student = F.log_softmax(s / temperature, dim=1)
    pred_teacher = F.softmax(t / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2
    return ce_weight * F.cross_entropy(s, y) + kd_weight * loss_kd


def _md_flags(*, ce_weight: float = 0.1, kd_weight: float = 0.9, temperature: float = 4.0) -> dict:
    """mdistiller's CE_WEIGHT / KD_WEIGHT as `--convention mdistiller`."""
    return _flags("mdistiller", ce_weight, kd_weight, temperature)


def _md_save(sd: StateDict, path: str | Path, *, epoch: int, **extras: Any) -> list[Path]:
    """`path` (best/latest/epoch_N) holds the DataParallel distiller, student_{best,latest,N} the student."""
    x = SaveExtras(**extras)
    if x.teacher_state is None:
        raise ValueError("mdistiller saves the whole distiller (student and teacher): pass teacher_state")
    path = Path(path)
    distiller = {f"module.student.{k}": v for k, v in sd.items()}
    distiller.update({f"module.teacher.{k}": v for k, v in x.teacher_state.items()})
    state = {"epoch": epoch, "model": distiller, "optimizer": _opt(sd, x), "best_acc": _acc(x.metric)}
    student_path = path.with_name("student_" + path.name.removeprefix("epoch_"))
    for p, obj in ((path, state), (student_path, {"model": dict(sd)})):
        with open(p, "wb") as f:  # utils.save_checkpoint writes through an open file
            torch.save(obj, f)
    return [path, student_path]


# --- timm: LogitDistillationTask (train.py --kd-model-name) and CheckpointSaver -------------------


def _timm_weights(task_loss_weight: float | None, distill_loss_weight: float | None) -> tuple[float, float]:
    """The task's three weighting modes -> (task weight, distill weight)."""
    if distill_loss_weight is not None:
        return (1.0 if task_loss_weight is None else task_loss_weight), distill_loss_weight
    if task_loss_weight is not None:
        return task_loss_weight, 1.0 - task_loss_weight
    return 1.0, 1.0


def _timm_loss(
    s: Tensor,
    t: Tensor,
    y: Tensor,
    *,
    task_loss_weight: float | None = None,
    distill_loss_weight: float | None = None,
    temperature: float = 4.0,
    smoothing: float = 0.1,
) -> Tensor:
    """task*CE (LabelSmoothingCrossEntropy at train.py's default 0.1) + distill*T²*KL(batchmean)."""
    w_task, w_distill = _timm_weights(task_loss_weight, distill_loss_weight)
    if smoothing:
        logprobs = F.log_softmax(s, dim=-1)
        nll_loss = -logprobs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
        task_loss = ((1.0 - smoothing) * nll_loss + smoothing * -logprobs.mean(dim=-1)).mean()
    else:
        task_loss = F.cross_entropy(s, y)
    prob_s = F.log_softmax(s / temperature, dim=-1)
    prob_t = F.log_softmax(t / temperature, dim=-1)
    kd_loss = F.kl_div(prob_s, prob_t, reduction="batchmean", log_target=True) * (temperature**2)
    return w_task * task_loss + w_distill * kd_loss


def _timm_flags(
    *,
    task_loss_weight: float | None = None,
    distill_loss_weight: float | None = None,
    temperature: float = 4.0,
    smoothing: float = 0.1,
) -> dict:
    """timm's task / distill weights as `--convention timm`."""
    w_task, w_distill = _timm_weights(task_loss_weight, distill_loss_weight)
    note = f"label smoothing {smoothing:g} on the CE term; kddoctor's CE has none" if smoothing else ""
    return _flags("timm", w_task, w_distill, temperature, expressible=not smoothing, note=note)


def _timm_save(sd: StateDict, path: str | Path, *, epoch: int, **extras: Any) -> list[Path]:
    """CheckpointSaver._save with a task: epoch, arch, optimizer, version, args, state_dict, ema, metric."""
    x = SaveExtras(**extras)
    # Without args timm writes type(model).__name__.lower(); the replica sees no model, so 'model'.
    state: dict[str, Any] = {"epoch": epoch, "arch": "model", "optimizer": _opt(sd, x), "version": 2}
    if x.args is not None:
        state["arch"], state["args"] = x.args.model, x.args
    state["state_dict"] = dict(sd)  # task.get_checkpoint_state(): the student alone, unwrapped
    if x.ema_state is not None:
        state["state_dict_ema"] = dict(x.ema_state)
    if x.metric is not None:
        state["metric"] = x.metric
    torch.save(state, path)
    return [Path(path)]


# --- RepDistiller: DistillKL in train_student.py --distill kd ------------------------------------


def _rep_loss(
    s: Tensor,
    t: Tensor,
    y: Tensor,
    *,
    gamma: float = 1.0,
    alpha: float | None = None,
    beta: float | None = None,
    temperature: float = 4.0,
) -> Tensor:
    """gamma*CE + alpha*DistillKL + beta*0, DistillKL = sum-KL*T²/batch; -a/-b left None: TypeError."""
    p_s = F.log_softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    loss_div = F.kl_div(p_s, p_t, reduction="sum") * (temperature**2) / s.shape[0]
    loss_kd = 0  # --distill kd has no term beyond the KL
    return gamma * F.cross_entropy(s, y) + alpha * loss_div + beta * loss_kd


def _rep_flags(
    *, gamma: float = 1.0, alpha: float | None = None, beta: float | None = None, temperature: float = 4.0
) -> dict:
    """RepDistiller's -r / -a as `--convention repdistiller`."""
    if alpha is None or beta is None:
        raise TypeError("RepDistiller needs -a and -b (None * loss fails in helper/loops.py)")
    return _flags("repdistiller", gamma, alpha, temperature)


def _rep_save(sd: StateDict, path: str | Path, *, epoch: int, **extras: Any) -> list[Path]:
    """Layout by file name: *_last.pth {opt, model}; ckpt_epoch_N.pth {epoch, model, accuracy}; else _best."""
    x = SaveExtras(**extras)
    path, model = Path(path), dict(sd)
    if path.name.endswith("_last.pth"):
        state: dict[str, Any] = {"opt": x.args, "model": model}
    elif path.name.startswith("ckpt_epoch_"):
        state = {"epoch": epoch, "model": model, "accuracy": _acc(x.metric)}
    else:  # {model_s}_best.pth
        state = {"epoch": epoch, "model": model, "best_acc": _acc(x.metric)}
    torch.save(state, path)
    return [path]


TORCHDISTILL = Framework(
    "torchdistill",
    _td_loss,
    _td_save,
    _td_flags,
    "yoshitomo-matsubara/torchdistill@3e4373c45214c5c56eebac481d5bfe8b8735aa05: loss "
    "torchdistill/losses/mid_level.py:135-189 (beta default :174, CE reduction :175, bare KL :185-186); "
    "checkpoint torchdistill/common/main_util.py:351-372 (save_ckpt), called at "
    "examples/torchvision/image_classification.py:165-167 with argparse args (:26-44)",
    {"temperature": 1.0, "alpha": 0.5, "reduction": "batchmean"},  # configs/sample/ilsvrc2012/kd/*.yaml
)
MDISTILLER = Framework(
    "mdistiller",
    _md_loss,
    _md_save,
    _md_flags,
    "megvii-research/mdistiller@a08d46f10d6102bd6e3f258ca5ac880b020ea259: loss "
    "mdistiller/distillers/KD.py:8-13,31-34 (defaults mdistiller/engine/cfg.py:60-64); checkpoint "
    "mdistiller/engine/trainer.py:127-151 via mdistiller/engine/utils.py:96-98, "
    "DataParallel at tools/train.py:78",
    {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
)
TIMM = Framework(
    "timm",
    _timm_loss,
    _timm_save,
    _timm_flags,
    "huggingface/pytorch-image-models@aa4b5850c1543fa488abf260f18390eda46cf85d: loss "
    "timm/task/distillation.py:290-317,393-397 (train.py:446-452 flags, :900-911 criterion, :326 "
    "--smoothing 0.1; timm/loss/cross_entropy.py:11-26); checkpoint timm/utils/checkpoint_saver.py:89-110 "
    "with timm/task/task.py:187-204, train.py:1048-1058",
    {"temperature": 4.0, "smoothing": 0.1},
)
REPDISTILLER = Framework(
    "RepDistiller",
    _rep_loss,
    _rep_save,
    _rep_flags,
    "HobbitLong/RepDistiller@b84f547c5db6a35318d4671d7d5c4de74c822403: loss distiller_zoo/KD.py:7-17, "
    "helper/loops.py:120-125,184 (flags train_student.py:73-78); checkpoints train_student.py:313-320 "
    "(_best), 325-331 (ckpt_epoch_N), 338-343 (_last)",
    {"gamma": 0.1, "alpha": 0.9, "beta": 0.0, "temperature": 4.0},  # README.md:46
)
FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (TORCHDISTILL, MDISTILLER, TIMM, REPDISTILLER)}
