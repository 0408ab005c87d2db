"""What the causal-LM checks read: both splits' token metrics and facts, the probes, the run's objective."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

from ..convention import KDConvention

SEQUENCE_TOKENS_Z = 16  # tokens per sequence counted as independent when a gap's z-score is computed


class TokenSplit(dict):
    """One split's pass: TokenMetrics.compute() plus vocab sizes, `facts` (LMFacts) and run facts; `n` is
    the counted tokens (what a check's min_samples counts for causal LMs)."""

    @property
    def n(self) -> int:
        return int(self["tokens"])

    @property
    def effective_n(self) -> int:
        """Counted tokens are not independent: at most SEQUENCE_TOKENS_Z per sequence count."""
        return min(self.n, SEQUENCE_TOKENS_Z * self["facts"]["sequences"])


@dataclass
class LMEvaluation:
    """Everything the LM checks read. `convention` is the stated objective (task causal-lm: its reduction,
    top-k target and KD dtype) at the measured tokens per train sequence."""

    splits: dict
    convention: KDConvention
    config: object = None  # the run's DiagnoseConfig (seed, budgets, sampling)
    tokenizers: dict = field(default_factory=dict)
    exposure: dict | None = None
    exposure_skipped: str = "no val sequence has 48 attended tokens to prompt and sample from"
    features_skipped: str = "fewer than 20 sequences' hidden states per split (no LM head to tap)"
    capture_k: int | None = None  # the teacher is an offline capture of its top k ids (k < vocabulary)
    probes: object | None = None  # probes.Probes on rows the main pass sampled (None: no counted row)
    fit_steps: int = 64
    sweep_steps: int = 20
    probe_budget: float | None = None  # seconds per probe (None: the steps alone)
    unit: str = "tokens"
    device: object = "cpu"
    teacher_spec: str = "teacher"
    student_spec: str = "student"
    teacher_load: dict = field(default_factory=dict)  # its dtype and devices (lm.models.teacher_load)
    timings: dict = field(default_factory=dict)  # seconds of the steps after the pass (exposure, rows)
    vocab_text: tuple | None = None  # (each token id's text, special ids), when a tokenizer is known
    train_augmented: bool = False  # a second read of the train loader gave other sequences

    def __post_init__(self) -> None:
        tps = self.splits["train"]["facts"]["tokens_per_sequence"]
        self.convention = replace(self.convention, tokens_per_sequence=tps, task="causal-lm")

    def side(self, split: str) -> TokenSplit | None:
        return self.splits.get(split)

    @property
    def train(self) -> TokenSplit:
        return self.splits["train"]

    @property
    def val(self) -> TokenSplit:
        return self.splits["val"]

    @property
    def vocab(self) -> int:
        return self.splits["val"]["vocab"]

    @property
    def capabilities(self) -> set[str]:
        caps = set(self.splits)
        if self.probes is not None:
            caps |= {"probe_rows", "trainable"}
            if self.capture_k is None:  # a live teacher module (an offline capture has no train mode)
                caps.add("teacher_module")
        if self.exposure is not None:
            caps.add("exposure")
        if self.convention.top_k:
            caps.add("stated_top_k")
        if self.capture_k is None or (self.convention.top_k or self.vocab + 1) <= self.capture_k:
            caps.add("teacher_distribution")
        if all(
            len(m.get("features") or {}) == 2 and len(m["features"]["student"]) >= 20
            for m in self.splits.values()
        ):
            caps.add("pooled_features")
        return caps

    @functools.cached_property
    def token_classes(self) -> tuple[list[str], object] | None:
        """(class names, [V, C] bool table) of the token classes, from the tokenizer's text."""
        if self.vocab_text is None:
            return None
        from .text_stats import token_classes

        strings, specials = self.vocab_text
        return token_classes(list(strings)[: self.vocab], specials)

    @property
    def state_top_k(self) -> str:
        return f"state --teacher-top-k K, K <= {self.capture_k}, if the student was distilled on the top K"

    @property
    def need_reasons(self) -> dict[str, str]:
        k, state = self.capture_k, self.state_top_k
        reasons = {"exposure": self.exposure_skipped, "pooled_features": self.features_skipped}
        if k is not None:
            reasons["teacher_distribution"] = (
                f"the teacher is an offline top-{k} capture: the KD term over its whole distribution cannot "
                f"be computed from it ({state})"
            )
            reasons["stated_top_k"] = f"no --teacher-top-k stated; the capture holds the top {k} ({state})"
        return reasons


def z_score(diff: float, p: float, split: TokenSplit) -> float:
    """A token-rate difference over its standard error at the split's effective n."""
    se = math.sqrt(max(p * (1 - p), 1e-6) * 2 / max(split.effective_n, 1))
    return diff / se


def kd_shares(ev: LMEvaluation) -> tuple[float, float, float]:
    """(the stated reduction's per-token multiplier of the KD term, the KD share of the loss the weights
    state, the share it really has at the measured tokens per train sequence)."""
    conv, vocab = ev.convention, ev.splits["train"]["vocab"]
    return conv.reduction_scale(vocab), replace(conv, reduction="token").kd_share(vocab), conv.kd_share(vocab)


def unigram_log_probs(ev: LMEvaluation):
    """The train split's unigram log-probability of each id (half a count of smoothing per id)."""
    import numpy as np

    train = np.asarray(ev.splits["train"]["text"]["labels"].sum(0), dtype=np.float64)
    return np.log((train + 0.5) / (train.sum() + 0.5 * len(train)))


def unigram_nll(ev: LMEvaluation) -> dict[str, float]:
    """Each split's NLL per counted token under the train split's unigram distribution (half a count of
    smoothing per id): what a student that learned nothing but token frequencies would score."""
    counts = {name: m["text"]["labels"].sum(0) for name, m in ev.splits.items()}
    log_p = unigram_log_probs(ev)
    return {name: float(-(c * log_p[: len(c)]).sum() / max(c.sum(), 1.0)) for name, c in counts.items()}


def share_of_gain(student_nll: float, teacher_nll: float, unigram: float) -> float:
    """The share of the teacher's NLL gain over a unigram model that the student misses."""
    return (student_nll - teacher_nll) / max(unigram - teacher_nll, 1e-6)


def gap_share(split: TokenSplit, unigram: float) -> dict:
    """How far behind its teacher the student sits on a split, as the share of the teacher's gain over
    a unigram model that the student misses (0: matches its teacher; 1: no better than token
    frequencies), with its z-score and 95 % interval at the split's effective n."""
    gap = split["student"]["loss"] - split["teacher"]["loss"]
    room = max(unigram - split["teacher"]["loss"], 1e-6)
    se = split["nll_diff_sd"] / math.sqrt(max(split.effective_n, 1))
    return {
        "nll_gap": gap,
        "share": share_of_gain(split["student"]["loss"], split["teacher"]["loss"], unigram),
        "z": gap / max(se, 1e-9),
        "ci": [(gap - 1.96 * se) / room, (gap + 1.96 * se) / room],
    }
