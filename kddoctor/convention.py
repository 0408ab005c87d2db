"""The KD convention: how the training loss weighted CE and KD, as one frozen value.

Codebases disagree on everything a KD loss can vary: which term `alpha` weights (KD_Lib and DeiT the
KD term, torchdistill and timm's `--task-loss-weight` the CE term), whether the two weights sum to one
(mdistiller's CE_WEIGHT/KD_WEIGHT, RepDistiller's -r/-a do not have to), whether the KL is multiplied
by T², and how it is reduced (`batchmean`, the per-element `mean` DeiT uses, or `sum`). `KDConvention`
holds the user's statement once; it owns the loss, the effective weight of each term, the sentence
that states it, and the translation of any setting into the user's own words (`to_user`).

Canonical form: a setting is (alpha_kd, T) on the textbook objective `(1-a)*CE + a*T²*KL_batchmean`,
where alpha_kd is exactly the KD term's share of the effective weight. `from_user` maps any stated
convention there; `to_user` maps back keeping the user's reduction, T² choice and total weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from . import convention_text, losses
from .errors import UserError, check_int, check_number
from .losses import DIVERGENCES, KD_DTYPES, SUPPORT_RULES, TOP_K_RULES, effective_divergence
from .presets import PRESETS, Preset, written

KD_REDUCTIONS = ("batchmean", "mean", "sum")
LM_REDUCTIONS = (
    "token",
    "batchmean",
    "mean",
    "sum",
)  # a causal-LM KL over [B, L, V]; token: per counted token
FORMS = ("alpha_kd", "alpha_ce", "weights")
__all__ = [
    "FORMS",
    "KD_DTYPES",
    "KD_REDUCTIONS",
    "LM_REDUCTIONS",
    "PRESETS",
    "KDConvention",
    "Preset",
]


_r = written  # a weight as a user would write it


@dataclass(frozen=True)
class KDConvention:
    """The KD objective a student was trained with: w_ce*CE + w_kd*[T²]*KL(t||s) under `reduction`."""

    ce_weight: float = 0.3
    kd_weight: float = 0.7
    temperature: float = 4.0
    t2: bool = True
    reduction: str = "batchmean"
    train_batch_size: int | None = None  # `sum` scales the KL by the training batch size
    form: str = "alpha_kd"  # how the user states the weights (FORMS)
    preset: str = "kd"  # whose vocabulary the user speaks (PRESETS)
    top_k: int | None = None  # causal LMs: the target kept only the teacher's top k logits (renormalized)
    kd_dtype: str = "float32"  # the dtype the KD term ran in
    # causal LMs: counted tokens per sequence, measured on the data: 'batchmean' over [B, L, V] divides
    # the token sum by B only, so a per-token KL is worth this much more (1 for classification)
    tokens_per_sequence: float = 1.0
    task: str = "classification"  # what the loss is over: samples, or the counted tokens of a causal LM
    # causal LMs: the divergence the KD term computes (losses.DIVERGENCES), its beta (a JSD's mixture
    # weight, a skew divergence's alpha), a top-k target's missing-mass rule, and the share of batches
    # the student generated itself (on-policy, TRL's lmbda), sampled at `sample_temperature`
    divergence: str = "forward_kl"
    beta: float | None = None
    top_k_rule: str = "renormalize"
    lmbda: float | None = None
    sample_temperature: float | None = None

    def __post_init__(self) -> None:
        for flag, w in (("--ce-weight", self.ce_weight), ("--kd-weight", self.kd_weight)):
            if check_number(flag, w) < 0:
                raise UserError(f"{flag} must be >= 0, got {w}")
        if self.ce_weight + self.kd_weight <= 0:
            raise UserError("the CE and KD weights are both 0: nothing was trained; state the real weights")
        if check_number("--temperature", self.temperature) <= 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.reduction not in (LM_REDUCTIONS if self.task == "causal-lm" else KD_REDUCTIONS):
            raise UserError(
                f"--kd-reduction must be one of {', '.join(KD_REDUCTIONS)}, got {self.reduction!r}"
            )
        if self.top_k is not None:
            check_int("--teacher-top-k", self.top_k, 1)
        if self.kd_dtype not in KD_DTYPES:
            raise UserError(f"--kd-dtype must be one of {', '.join(KD_DTYPES)}, got {self.kd_dtype!r}")
        if self.train_batch_size is not None:
            check_int("--train-batch-size", self.train_batch_size, 1)
        if self.reduction == "sum" and self.train_batch_size is None:
            raise UserError(
                "--kd-reduction sum scales the KD term by the training batch size: pass --train-batch-size B"
            )
        self._check_objective()
        if self.form not in FORMS or self.preset not in PRESETS:
            raise ValueError(f"unknown form {self.form!r} or preset {self.preset!r}")
        if self.form != "weights" and not math.isclose(self.ce_weight + self.kd_weight, 1.0, abs_tol=1e-9):
            raise ValueError("an alpha form needs weights that sum to 1")

    def _check_objective(self) -> None:
        """The causal-LM objective fields: known names, beta and lmbda in range, LM-only."""
        if self.divergence not in DIVERGENCES:
            raise UserError(f"--divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if self.top_k_rule not in TOP_K_RULES:
            raise UserError(f"--top-k-rule must be one of {', '.join(TOP_K_RULES)}, got {self.top_k_rule!r}")
        for flag, v in (("--beta", self.beta), ("--lmbda", self.lmbda)):
            if v is not None and not 0.0 <= check_number(flag, v) <= 1.0:
                raise UserError(f"{flag} must be in [0, 1], got {v}")
        if self.divergence.startswith("skew") and self.beta is not None and not 0 < self.beta < 1:
            raise UserError(f"--beta of a skew divergence must be in (0, 1), got {self.beta}")
        lm_only = self.divergence != "forward_kl" or self.beta is not None or self.lmbda is not None
        if self.task != "causal-lm" and (lm_only or self.top_k_rule != "renormalize"):
            raise UserError(
                "--divergence, --beta, --lmbda and --top-k-rule describe a causal-LM loss: "
                "add --task causal-lm"
            )
        kind = effective_divergence(self.divergence, self.beta)
        if not self.top_k or kind == "forward_kl":
            return
        if self.top_k_rule not in SUPPORT_RULES or kind not in ("jsd", "reverse_kl"):
            raise UserError(
                f"--teacher-top-k targets a forward KL (as DistillKit and verl do); --divergence "
                f"{self.divergence} needs the teacher's full distribution"
            )
        if self.top_k != 1:
            raise UserError(
                f"--teacher-top-k {self.top_k} with a {losses.DIVERGENCE_NAMES[kind]} term: TRL's server "
                "path computes a JSD or reverse KL on top-1 support only (loss_top_k must be 1 with beta > 0)"
            )

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_alpha(cls, alpha: float, alpha_on: str = "kd", **kw) -> KDConvention:
        """`(1-alpha)*CE + alpha*KD` (alpha on kd) or `alpha*CE + (1-alpha)*KD` (alpha on ce)."""
        if not 0.0 <= check_number("--alpha", alpha) <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        if alpha_on not in ("kd", "ce"):
            raise UserError(f"--alpha-on must be one of kd, ce, got {alpha_on!r}")
        ce, kd = (1.0 - alpha, alpha) if alpha_on == "kd" else (alpha, 1.0 - alpha)
        return cls(ce_weight=ce, kd_weight=kd, form=f"alpha_{alpha_on}", **kw)

    @classmethod
    def textbook(cls, alpha_kd: float, temperature: float, reduction: str = "batchmean") -> KDConvention:
        """The canonical objective: (1-a)*CE + a*T²*KL, batchmean (causal LMs: per counted token)."""
        return cls(ce_weight=1.0 - alpha_kd, kd_weight=alpha_kd, temperature=temperature, reduction=reduction)

    @classmethod
    def pure_kd(
        cls, temperature: float = 1.0, t2: bool = False, reduction: str = "batchmean"
    ) -> KDConvention:
        """KL to the teacher alone (the capacity probe's objective)."""
        return cls(ce_weight=0.0, kd_weight=1.0, temperature=temperature, t2=t2, reduction=reduction)

    # --- what the loss is ------------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        """The single alpha of the results.json contract (on `alpha_on`)."""
        total = self.ce_weight + self.kd_weight
        return (self.ce_weight if self.alpha_on == "ce" else self.kd_weight) / total

    @property
    def alpha_on(self) -> str:
        return "ce" if self.form == "alpha_ce" else "kd"

    @property
    def bare_kl(self) -> bool:
        """torchdistill with alpha 0: the loss is the KL alone, without beta or T²."""
        return PRESETS[self.preset].bare_kl_without_ce and self.ce_weight == 0

    def _kd_factor(self, num_classes: int) -> float:
        """What one unit of KD weight is worth next to a batch-mean CE (T² and the reduction)."""
        if self.bare_kl:
            return 1.0 / self.temperature**2
        t = 1.0 if self.t2 else 1.0 / self.temperature**2
        return t * self.reduction_scale(num_classes)

    def reduction_scale(self, num_classes: int) -> float:
        """What the reduction does to a per-sample (per-token) KL: `mean` divides it by the class count
        (the vocabulary) too, a common bug; `batchmean` over [B, L, V] multiplies it by the tokens per
        sequence, `sum` by those and the training batch; `token` is the per-token mean."""
        per = self.tokens_per_sequence
        return {
            "token": 1.0,
            "batchmean": per,
            "mean": 1.0 / num_classes,
            "sum": per * float(self.train_batch_size or 1),
        }[self.reduction]

    def effective(self, num_classes: int) -> dict:
        """Each term's weight in units comparable to the CE gradient (Hinton et al.: soft-target
        gradients shrink as 1/T², which T² undoes), and the KD term's share of the total."""
        kd_w = 1.0 if self.bare_kl else self.kd_weight
        kd_eff = kd_w * self._kd_factor(num_classes)
        total = kd_eff + self.ce_weight
        return {
            "ce": self.ce_weight,
            "kd": kd_w,
            "kd_effective": kd_eff,
            "reduction_scale": self.reduction_scale(num_classes),
            "t2_factor": 1.0 if self.t2 and not self.bare_kl else 1.0 / self.temperature**2,
            "kd_share": kd_eff / total if total else 0.0,
        }

    def kd_share(self, num_classes: int) -> float:
        return self.effective(num_classes)["kd_share"]

    def terms(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        """(weighted KD term, weighted CE term) on one batch; `sum` scaled to the stated training batch."""
        return losses.batch_terms(self, s, t, y)

    def loss(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The training objective on one batch."""
        kd, ce = self.terms(s, t, y)
        return s.new_zeros(()) + kd + ce

    def token_terms(
        self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, *, as_trained: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted KD term, weighted CE term) of a causal-LM batch (losses.token_terms)."""
        return losses.token_terms(self, s, t, target, as_trained=as_trained)

    def token_loss(self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
        """The causal-LM objective on one batch (see `token_terms`)."""
        kd, ce = self.token_terms(s, t, target, **kw)
        return ce + kd

    def unit_terms(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple:
        """(CE, KD at T), each a mean per unit and unweighted (losses.unit_terms)."""
        return losses.unit_terms(self, s, t, y)

    def term_weights(self, num_classes: int) -> tuple[float, float]:
        """(a, b): this objective is a * CE + b * KD_T over `unit_terms` (T², the reduction and the bare
        torchdistill KL folded into b)."""
        kd_w = 1.0 if self.bare_kl else self.kd_weight
        t2 = self.temperature**2 if self.t2 and not self.bare_kl else 1.0
        return self.ce_weight, kd_w * t2 * self.reduction_scale(num_classes)

    # --- translation -----------------------------------------------------------------------------

    def from_user(self, num_classes: int) -> tuple[float, float]:
        """This setting as (alpha_kd, T) on the textbook objective (same effective KD share)."""
        return self.kd_share(num_classes), self.temperature

    def to_user(self, alpha_kd: float, temperature: float, num_classes: int) -> KDConvention:
        """The textbook setting (alpha_kd, T) in this user's convention: the same effective KD share
        under their T² choice and reduction, with their total weight kept (it sets their step size)."""
        probe = replace(self, temperature=temperature)
        if probe.bare_kl:
            probe = replace(probe, ce_weight=1e-9)  # the factor of a mixed loss, not of the bare KL
        f = probe._kd_factor(num_classes)
        ce, kd = 1.0 - alpha_kd, alpha_kd / f  # kd*f / (kd*f + ce) == alpha_kd
        total = self.ce_weight + self.kd_weight if self.form == "weights" else 1.0
        ce_x, kd_x = (w * total / (ce + kd) for w in (ce, kd))
        for digits in range(3, 12):  # as few digits as keep the effective share within 0.05 points
            out = self._written(_r(ce_x, digits), _r(kd_x, digits), _r(temperature))
            if abs(out.kd_share(num_classes) - alpha_kd) < 5e-4:
                break
        return out

    def _written(self, ce: float, kd: float, temperature: float) -> KDConvention:
        """These weights as the user writes them: an alpha form rounds its one alpha, the other is 1 - it."""
        if self.form == "alpha_kd":
            ce = 1.0 - kd
        elif self.form == "alpha_ce":
            kd = 1.0 - ce
        return replace(self, ce_weight=ce, kd_weight=kd, temperature=_r(temperature))

    def recommendation(self, alpha_kd: float, temperature: float, note: str = "") -> dict:
        """This setting as a sweep's recommendation (results.json `recommended`): the textbook point it
        stands for and the setting in the user's words and code."""
        return {
            "alpha_kd": alpha_kd,
            "temperature": temperature,
            "user": self.user_params(),
            "setting": self.setting() + note,
            "code": self.code(),
            "code_lang": self.code_lang,
        }

    def same_setting(self, other: KDConvention) -> bool:
        """Equal as the user would write them (a remedy that changes nothing is no remedy): the same
        objective beyond its weights (target, divergence, T², reduction, dtype), and the same weights and
        T or the same words in the trainer's own parameters (a trainer with fixed weights cannot write
        another KD share)."""
        key = lambda c: (_r(c.ce_weight), _r(c.kd_weight), _r(c.temperature))  # noqa: E731
        # what the weights do not say: a remedy that changes only the target (a tail bucket) changes it
        rest = lambda c: (c.top_k, c.top_k_rule, c.divergence, c.beta, c.lmbda, c.t2, c.reduction, c.kd_dtype)  # noqa: E731
        return rest(self) == rest(other) and (key(self) == key(other) or self.setting() == other.setting())

    # --- words -----------------------------------------------------------------------------------

    def _names(self) -> tuple[str | None, str | None]:
        """(CE name, KD name) of the weights the user writes; None for the one an alpha implies."""
        p = PRESETS[self.preset]
        if p.name == "kd":
            return {"alpha_kd": (None, "alpha"), "alpha_ce": ("alpha", None)}.get(
                self.form, ("ce_weight", "kd_weight")
            )
        if self.form == "alpha_kd":
            return None, p.kd_name
        return p.ce_name, p.kd_name  # torchdistill writes beta out even when it is 1 - alpha

    @property
    def tail_rule(self) -> str:
        """The rule that keeps a top-k target's missing mass as one bucket, as this trainer builds it."""
        return dict(PRESETS[self.preset].rule_names).get("tail", "tail")

    @property
    def keeps_tail(self) -> bool:
        return self.top_k_rule in ("tail", "tail_at_t")

    def user_params(self) -> dict:
        """The setting under the codebase's own parameter names (an LM trainer's: its beta, lmbda and the
        temperature it samples at when its loss runs at a fixed one)."""
        p = PRESETS[self.preset]
        out = {}
        if not p.fixed_weights:
            ce_name, kd_name = self._names()
            out = {ce_name: _r(self.ce_weight, 8)} if ce_name else {}
            if kd_name:
                out[kd_name] = _r(self.kd_weight, 8)
        if self.beta is not None and self.divergence in ("jsd", "skew_forward_kl", "skew_reverse_kl"):
            out[p.beta_name] = _r(self.beta, 8)
        if self.lmbda is not None and (p.lmbda_param or self.lmbda != p.lmbda):
            out["lmbda"] = _r(self.lmbda, 8)
        temperature = self.sample_temperature if p.loss_temperature is not None else self.temperature
        if temperature is not None:
            out[p.t_name] = _r(temperature, 8)
        if p.top_k is not None:  # a trainer that always truncates states its support in its own words
            out["loss_top_k"] = self.top_k
            out["loss_add_tail"] = self.top_k_rule == "tail_at_t"
        return out

    def setting(self) -> str:
        """e.g. `alpha=0.7, T=4` or `CE_WEIGHT=0.1, KD_WEIGHT=0.9, TEMPERATURE=4`."""
        return ", ".join(f"{k}={convention_text.value(v)}" for k, v in self.user_params().items())

    @property
    def weight_axis(self) -> str:
        """The knob a weight sweep moves, named as the user names it."""
        ce_name, kd_name = self._names()
        if self.form == "alpha_ce":
            return f"{ce_name} (CE weight" + (f"; {kd_name} = 1 - {ce_name})" if kd_name else ")")
        if self.form == "alpha_kd":
            return f"{kd_name} (KD weight)"
        return f"{kd_name} (KD weight; {ce_name} = total - {kd_name})"

    def axis_value(self) -> float:
        """This setting's position on `weight_axis`."""
        return _r(self.ce_weight if self.form == "alpha_ce" else self.kd_weight, 8)

    def formula(self) -> str:
        return convention_text.formula(self)

    def sentence(self, num_classes: int) -> str:
        """The convention assumed, in words, with each term's effective weight."""
        return convention_text.sentence(self, num_classes)

    def code(self) -> str:
        """This setting written where the user writes it (Python, the codebase's YAML, its CLI)."""
        return convention_text.setting_code(self)

    @property
    def code_lang(self) -> str:
        return PRESETS[self.preset].syntax

    def to_dict(self, num_classes: int) -> dict:
        """run.convention in results.json: the user's own form and the canonical weights."""
        alpha_kd, _ = self.from_user(num_classes)
        return {
            "preset": self.preset,
            "form": self.form,
            "user": self.user_params(),
            "ce_weight": self.ce_weight,
            "kd_weight": self.kd_weight,
            "temperature": self.temperature,
            "t2": self.t2,
            "reduction": self.reduction,
            "train_batch_size": self.train_batch_size,
            "top_k": self.top_k,
            "kd_dtype": self.kd_dtype,
            "tokens_per_sequence": self.tokens_per_sequence,
            "task": self.task,
            "divergence": self.divergence,
            "beta": self.beta,
            "top_k_rule": self.top_k_rule,
            "lmbda": self.lmbda,
            "sample_temperature": self.sample_temperature,
            "objective": convention_text.objective_words(self),
            "alpha_kd_equivalent": alpha_kd,
            "sentence": self.sentence(num_classes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> KDConvention:
        """Read `to_dict` back; the fields added later are optional (older results.json files)."""
        keys = (
            "ce_weight",
            "kd_weight",
            "temperature",
            "t2",
            "reduction",
            "train_batch_size",
            "form",
            "preset",
        )
        later = {"top_k": None, "kd_dtype": "float32", "tokens_per_sequence": 1.0, "task": "classification"}
        later.update(divergence="forward_kl", beta=None, top_k_rule="renormalize", lmbda=None)
        later.update(sample_temperature=None)
        return cls(**{k: d[k] for k in keys}, **{k: d.get(k, v) for k, v in later.items()})
