"""How common KD codebases state their loss: the `--convention` presets, each cited by file and line."""

from __future__ import annotations

from dataclasses import dataclass


def written(x: float, digits: int = 4) -> float:
    """A weight as a user would write it (`digits` significant digits, no float noise)."""
    return float(f"{x:.{digits}g}")


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
    # causal-LM trainers: their objective beyond CE/KD weights (refused for images)
    lm_only: bool = False
    divergence: str | None = None  # the trainer's divergence (the user may pick another where it lets them)
    beta: float | None = None  # its default beta (JSD mixture weight, or the skew coefficient)
    beta_name: str = "beta"
    lmbda: float | None = None  # its default share of student-generated sequences
    loss_temperature: float | None = None  # its loss's T whatever --temperature says (which then samples)
    top_k_rule: str = "renormalize"  # its missing-mass rule for a top-k teacher target
    top_k: int | None = None  # its own top-k target size, where it always has one
    rule_names: tuple[tuple[str, str], ...] = ()  # a --top-k-rule word as this trainer means it
    lmbda_param: bool = True  # its config has an lmbda (else always on-policy: written only if stated)
    fixed_weights: bool = False  # its loss has no CE/KD weights to state (one divergence term)


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
        Preset(
            "trl-gkd",
            "weights",
            "",
            "",
            "temperature",
            "python",
            (0.0, 1.0, 1.0),
            t2=False,
            reduction="token",
            lm_only=True,
            divergence="jsd",
            beta=0.5,
            lmbda=0.5,
            loss_temperature=1.0,
            fixed_weights=True,
            citation="huggingface/trl@f2cd577 trl/experimental/gkd/gkd_trainer.py:238-323 (generalized JSD: "
            "beta 0 forward KL, 1 reverse KL, else beta*KL(p||M) + (1-beta)*KL(q||M), "
            "M = beta*p + (1-beta)*q; labels != -100, divided by the counted tokens), :417-428 (the loss "
            "called without temperature: "
            "T 1), gkd_config.py:55-73 (temperature 0.9 samples; lmbda 0.5, beta 0.5)",
        ),
        Preset(
            "trl-distill",
            "weights",
            "",
            "",
            "temperature",
            "python",
            (0.0, 1.0, 1.0),
            t2=False,
            reduction="token",
            lm_only=True,
            divergence="jsd",
            beta=1.0,
            lmbda=1.0,
            fixed_weights=True,
            lmbda_param=False,
            citation="huggingface/trl@f2cd577 trl/experimental/distillation/distillation_trainer.py:133-145, "
            ":963-997 (the same JSD at its temperature, always on-policy), distillation_config.py:154-160 "
            "(beta 1.0: reverse KL)",
        ),
        Preset(
            "trl-server-distill",
            "weights",
            "",
            "",
            "temperature",
            "python",
            (0.0, 1.0, 1.0),
            t2=False,
            reduction="token",
            lm_only=True,
            divergence="jsd",
            beta=1.0,
            lmbda=1.0,
            fixed_weights=True,
            lmbda_param=False,
            top_k=1,
            top_k_rule="tail_at_t",
            rule_names=(("tail", "tail_at_t"), ("renormalize", "renormalize_both")),
            citation="huggingface/trl@f2cd577 trl/experimental/server_distillation/"
            "server_distillation_trainer.py:503-545 (beta 0: forward KL on the teacher's top-k ids at T), "
            ":197-242 (beta > 0: JSD on top-1 support, the teacher's top token and the text's own; beta 1: "
            "reverse KL on the text's token), :71-81 (loss_add_tail: one more class each, the mass outside "
            "the support; else both renormalized over it), :255-284, :346 (divided by the counted tokens of "
            "each micro-batch, then by the accumulation steps), server_distillation_config.py:52-65, "
            ":87-103 (loss_top_k 1, loss_add_tail True; top-1 only when beta > 0)",
        ),
        Preset(
            "distillkit",
            "weights",
            "cross_entropy weight",
            "kl weight",
            "temperature",
            "yaml",
            (0.5, 0.5, 1.0),
            t2=True,
            reduction="token",
            lm_only=True,
            divergence="forward_kl",
            top_k_rule="renormalize",
            citation="arcee-ai/DistillKit@a61c2e7 distillkit/lossfuncs/kl.py:17-87 (sparse KL on the "
            "teacher's top-k ids; missing mass ZERO renormalizes the teacher, SYMMETRIC_UNIFORM adds a tail "
            "term), "
            ":197-231 (times T², divided by the counted tokens), configuration.py:167-181 (CE 0.5 + KL 0.5, "
            "T 1, ZERO)",
        ),
        Preset(
            "minillm",
            "weights",
            "",
            "",
            "temperature",
            "python",
            (0.0, 1.0, 1.0),
            t2=False,
            reduction="token",
            lm_only=True,
            divergence="reverse_kl",
            lmbda=1.0,
            loss_temperature=1.0,
            fixed_weights=True,
            citation="microsoft/LMOps@4f2a9de minillm/minillm/losses.py:98-108 (the per-step reverse KL "
            "sum_v q (log q - log p), on sequences the student samples; policy-gradient terms aside)",
        ),
        Preset(
            "distillm",
            "alpha_kd",
            "1 - --kd-ratio",
            "--kd-ratio",
            "temperature",
            "shell",
            (0.0, 1.0, 1.0),
            t2=False,
            reduction="token",
            lm_only=True,
            divergence="skew_forward_kl",
            beta=0.1,
            beta_name="--skew-alpha",
            loss_temperature=1.0,
            citation="jongwooko/distillm@d47e77f distillm/losses.py:4-95 (fkl, rkl, sfkl, srkl, js, tv; "
            "no temperature; its fkl and sfkl omit the teacher entropy), finetune.py:171-189, :337 "
            "((1-kd_ratio)*CE + kd_ratio*distil), scripts/gpt2/distillm/train_0.1B_1.5B.sh:61,80 "
            "(--kd-ratio 1.0, --type adaptive-sfkl), arguments.py:178 (--skew-alpha 0.1)",
        ),
    )
}
