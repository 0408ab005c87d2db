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
import torch.nn.functional as F

from .errors import UserError, check_int, check_number
from .losses import IGNORE, KD_DTYPES, kd_term, token_kl
from .presets import PRESETS, Preset

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
    "resolve",
]


def _r(x: float, digits: int = 4) -> float:
    """A weight as a user would write it (`digits` significant digits, no float noise)."""
    return float(f"{x:.{digits}g}")


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
        if self.form not in FORMS or self.preset not in PRESETS:
            raise ValueError(f"unknown form {self.form!r} or preset {self.preset!r}")
        if self.form != "weights" and not math.isclose(self.ce_weight + self.kd_weight, 1.0, abs_tol=1e-9):
            raise ValueError("an alpha form needs weights that sum to 1")

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
        kd_w = 1.0 if self.bare_kl else self.kd_weight
        kd = ce = s.new_zeros(())
        if kd_w:
            if self.reduction == "sum":  # the user's batch, not this one
                kd = kd_term(s, t, self.temperature, t2=self.t2 and not self.bare_kl, reduction="batchmean")
                kd = kd * self.train_batch_size
            else:
                t2 = self.t2 and not self.bare_kl
                kd = kd_term(s, t, self.temperature, t2=t2, reduction=self.reduction)
            kd = kd_w * kd
        if self.ce_weight and y is not None:
            ce = self.ce_weight * F.cross_entropy(s, y)
        return kd, ce

    def loss(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The training objective on one batch."""
        kd, ce = self.terms(s, t, y)
        return s.new_zeros(()) + kd + ce

    def token_terms(
        self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, *, as_trained: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted KD term, weighted CE term) on [B, L, V] logits aligned with `target` [B, L] (-100 not
        counted): the CE per counted token; the KL in `kd_dtype`, on the `top_k` target, T² as stated.
        `as_trained` divides the KL sum as the reduction does on this very batch (training code); else it
        is per counted token times the reduction's per-token multiplier at the measured tokens per
        sequence (`reduction_scale`: the probes' rows are not the training batches)."""
        counted = target != IGNORE
        n = counted.sum().clamp_min(1)
        kd_w = 1.0 if self.bare_kl else self.kd_weight
        kd = ce = s.new_zeros(())
        if kd_w:
            t2 = self.temperature**2 if self.t2 and not self.bare_kl else 1.0
            kl = token_kl(s, t, self.temperature, self.kd_dtype, self.top_k).float() * counted
            if as_trained:
                divisor = {"token": n, "batchmean": s.shape[0], "mean": s.numel(), "sum": 1}[self.reduction]
                kd = kd_w * (kl.sum() / divisor * t2)
            else:
                kd = kd_w * (kl.sum() / n * (t2 * self.reduction_scale(s.shape[-1])))
        if self.ce_weight:
            flat = s.reshape(-1, s.shape[-1]), target.reshape(-1)
            if as_trained:  # the training code's own mean over the counted tokens
                ce = self.ce_weight * F.cross_entropy(*flat, ignore_index=IGNORE)
            else:
                ce = self.ce_weight * (F.cross_entropy(*flat, ignore_index=IGNORE, reduction="sum") / n)
        return kd, ce

    def token_loss(self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
        """The causal-LM objective on one batch (see `token_terms`)."""
        kd, ce = self.token_terms(s, t, target, **kw)
        return ce + kd

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

    def same_setting(self, other: KDConvention) -> bool:
        """Equal as the user would write them (a remedy that changes nothing is no remedy)."""
        key = lambda c: (_r(c.ce_weight), _r(c.kd_weight), _r(c.temperature))  # noqa: E731
        return key(self) == key(other)

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

    def user_params(self) -> dict:
        """The setting under the codebase's own parameter names."""
        ce_name, kd_name = self._names()
        weights = {ce_name: _r(self.ce_weight, 8)} if ce_name else {}
        if kd_name:
            weights[kd_name] = _r(self.kd_weight, 8)
        return {**weights, PRESETS[self.preset].t_name: _r(self.temperature, 8)}

    def setting(self) -> str:
        """e.g. `alpha=0.7, T=4` or `CE_WEIGHT=0.1, KD_WEIGHT=0.9, TEMPERATURE=4`."""
        return ", ".join(f"{k}={v:g}" for k, v in self.user_params().items())

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
        if self.form == "alpha_kd":
            return f"loss = (1-{self.kd_weight:g})*CE + {self.kd_weight:g}*KD"
        if self.form == "alpha_ce":
            return f"loss = {self.ce_weight:g}*CE + (1-{self.ce_weight:g})*KD"
        return f"loss = {self.ce_weight:g}*CE + {self.kd_weight:g}*KD"

    def sentence(self, num_classes: int) -> str:
        """The convention assumed, in words, with each term's effective weight."""
        eff = self.effective(num_classes)
        if self.bare_kl:
            t2 = "the bare KL (torchdistill drops beta and T² when alpha is 0)"
        elif self.t2:
            t2 = f"KD multiplied by T²={self.temperature**2:g}"
        else:
            t2 = "KD not multiplied by T² (--no-t2)"
        who = f" ({self.preset}: {self.setting()})" if self.preset != "kd" else ""
        if self.task == "causal-lm":
            return f"{self.formula()}{who} with T={self.temperature:g}, {t2}, {self._token_words(eff)}"
        red = f"KL reduced by '{self.reduction}'"
        if self.reduction == "sum":
            red += f" over training batches of {self.train_batch_size}"
        return (
            f"{self.formula()}{who} with T={self.temperature:g}, {t2}, {red}; effective weights: "
            f"CE {eff['ce']:.3g}, KD {eff['kd_effective']:.3g} in CE-gradient units "
            f"({eff['kd_share']:.0%} of the total)"
        )

    def _token_words(self, eff: dict) -> str:
        """How a causal-LM KL was reduced, truncated and computed, and the share it really had."""
        red = {
            "token": "KL averaged per counted token",
            "batchmean": "KL summed over tokens and divided by the batch ('batchmean' on [B, L, V])",
            "mean": "KL averaged over every [B, L, V] element ('mean')",
            "sum": f"KL summed over [B, L, V] and training batches of {self.train_batch_size}",
        }[self.reduction]
        top = f", teacher target truncated to its top {self.top_k}" if self.top_k else ""
        return (
            f"{red}{top}, KD computed in {self.kd_dtype}; at {self.tokens_per_sequence:.1f} counted tokens "
            f"per sequence the KD term carries {eff['kd_share']:.0%} of the loss"
        )

    def code(self) -> str:
        """This setting written where the user writes it (Python, the codebase's YAML, its CLI)."""
        from .flags import setting_code

        return setting_code(self)

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
        return cls(**{k: d[k] for k in keys}, **{k: d.get(k, v) for k, v in later.items()})


from .flags import resolve  # noqa: E402  (the flags build a KDConvention: defined above)
