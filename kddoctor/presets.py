"""How common KD codebases state their loss: the `--convention` presets, each cited by file and line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """How one codebase states its KD loss: parameter names, fixed choices, defaults, source."""

    name: str
    form: str  # alpha_kd: one alpha on KD; alpha_ce: one alpha on CE; weights: two free weights
    ce_name: str  # the codebase's name for the CE weight
    kd_name: str  # ... for the KD weight
    t_name: str  # ... for the temperature
    syntax: str  # python | yaml | shell: how a remedy writes a setting
    defaults: tuple[float, float, float]  # (CE weight, KD weight, T) of the codebase's reference recipe
    t2: bool | None = None  # fixed by the codebase (None: the user says, --no-t2)
    reduction: str | None = None  # fixed by the codebase (None: the user says, --kd-reduction)
    citation: str = ""
    bare_kl_without_ce: bool = False  # torchdistill: alpha 0 returns the bare KL (no beta, no T²)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "kd",
            "alpha_kd",
            "1 - alpha",
            "alpha",
            "T",
            "python",
            (0.3, 0.7, 4.0),
            citation="Hinton et al. (2015) as KD_Lib and most tutorials write it: (1-alpha)*CE + alpha*T²*KL",
        ),
        Preset(
            "torchdistill",
            "alpha_ce",
            "alpha",
            "beta",
            "temperature",
            "yaml",
            (0.5, 0.5, 1.0),
            t2=True,
            citation="yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:135-189 "
            "(alpha*CE + beta*T²*KL, beta defaults to 1-alpha :174, bare KL when alpha is 0 :185-186)",
            bare_kl_without_ce=True,
        ),
        Preset(
            "mdistiller",
            "weights",
            "CE_WEIGHT",
            "KD_WEIGHT",
            "TEMPERATURE",
            "yaml",
            (0.1, 0.9, 4.0),
            t2=True,
            reduction="batchmean",
            citation="megvii-research/mdistiller@a08d46f mdistiller/distillers/KD.py:8-13,31-34 "
            "(kl_div(...).sum(1).mean() * T²; defaults mdistiller/engine/cfg.py:60-64)",
        ),
        Preset(
            "repdistiller",
            "weights",
            "-r",
            "-a",
            "--kd_T",
            "shell",
            (0.1, 0.9, 4.0),
            t2=True,
            reduction="batchmean",
            citation="HobbitLong/RepDistiller@b84f547 distiller_zoo/KD.py:7-17 (sum-KL * T² / batch), "
            "helper/loops.py:184 (gamma*CE + alpha*KD), flags train_student.py:73-78",
        ),
        Preset(
            "timm",
            "weights",
            "--task-loss-weight",
            "--distill-loss-weight",
            "--kd-temperature",
            "shell",
            (1.0, 1.0, 4.0),
            t2=True,
            reduction="batchmean",
            citation="huggingface/pytorch-image-models@aa4b585 timm/task/distillation.py:290-317 "
            "(KL batchmean * T²), train.py:446-452 (weights; task and distill both default to 1)",
        ),
        Preset(
            "deit",
            "alpha_kd",
            "1 - alpha",
            "--distillation-alpha",
            "--distillation-tau",
            "shell",
            (0.5, 0.5, 1.0),
            t2=True,
            reduction="mean",
            citation="facebookresearch/deit@7e160fe losses.py:54-69 (sum-KL * T² / outputs.numel(): "
            "the per-element mean; (1-alpha)*CE + alpha*KD), main.py:145-147",
        ),
    )
}
