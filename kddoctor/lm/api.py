"""diagnose_lm(): a causal-LM teacher and student over train and val, per counted token, with the LM
checks and the LM cause catalogue (lm_causes.toml).

Stages as for images: one streaming pass per split (token metrics + the facts the checks read) ->
exposure-bias sampling on a few val sequences -> `LMEvaluation` -> LM checks (`Finding`s) ->
`causes.rank(..., name="lm_causes.toml")` -> verdict -> `Diagnosis`.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Iterable

import torch
from torch import nn

from .._version import __version__
from ..causes import LIKELY, gap_strength, rank
from ..config import Budgets
from ..convention import KDConvention
from ..diagnosis import Diagnosis
from ..engine import pick_device
from ..errors import UserError
from ..metrics.functional import wilson_interval
from .checks import REDUCTIONS, LMEvaluation, kd_shares, run_lm_checks
from .engine import evaluate_lm, lm_batch
from .exposure import exposure
from .facts import DTYPES
from .probes import TOKENS, TRAIN_ROWS, VAL_ROWS, Probes
from .rows import RowSample

CATALOGUE = "lm_causes.toml"
PRECISION_ROWS = 4096  # val tokens on which the KD term's KL is computed in the training dtype too
NOTE = "causal-LM run: every metric is per counted token (labels != -100), each position predicting the next"


def diagnose_lm(
    teacher: nn.Module,
    student: nn.Module,
    train: Iterable,
    val: Iterable,
    *,
    convention: KDConvention | None = None,
    reduction: str = "token",
    top_k: int | None = None,
    kd_dtype: str = "float32",
    device: str = "auto",
    allow_vocab_truncation: bool = False,
    tokenizers: dict | None = None,
    teacher_spec: str = "teacher",
    student_spec: str = "student",
    seed: int = 0,
    budgets: Budgets | None = None,
    debug: bool = False,
) -> Diagnosis:
    """Both causal LMs over train and val (batches with input_ids, attention_mask, labels).

    `reduction` is how the training code reduced its KL over [B, L, V] logits (token: per counted
    token; batchmean: by the batch only; mean: by every element; sum); `top_k` the size of a top-k
    truncated teacher target, if one was used; `kd_dtype` the dtype the KD loss ran in;
    `tokenizers`: {"teacher": info, "student": info} from `models.tokenizer_info`; `budgets`: the
    fine-tuning probes' steps and time budget (config.Budgets; timed by default).
    """
    start, dev, conv = time.perf_counter(), pick_device(device), convention or KDConvention()
    budgets = budgets or Budgets()
    validate_lm_options(reduction, top_k, kd_dtype, conv.train_batch_size)
    tokenizers = tokenizers or {}
    facts = {
        "pad_id": _pad_id(tokenizers, train),
        "top_k": top_k,
        "temperature": conv.temperature,
        "dtype": kd_dtype,
    }
    modes = (teacher.training, student.training)
    teacher.to(dev).eval()
    student.to(dev).eval()
    splits, timings = {}, {}
    rows = {"train": RowSample(TRAIN_ROWS, TOKENS, seed), "val": RowSample(VAL_ROWS, TOKENS, seed + 1)}
    try:
        for name, loader in (("train", train), ("val", val)):
            began = time.perf_counter()
            splits[name] = evaluate_lm(
                teacher,
                student,
                loader,
                name=name,
                device=dev,
                allow_vocab_truncation=allow_vocab_truncation,
                facts={**facts, "precision_rows": PRECISION_ROWS if name == "val" else 0},
                rows=rows[name],
            )
            timings[f"eval_{name}"] = round(time.perf_counter() - began, 4)
        main_pass = time.perf_counter() - start
        if top_k is not None and top_k >= splits["val"]["vocab"]:
            raise UserError(
                f"--teacher-top-k {top_k} is not below the vocabulary ({splits['val']['vocab']:,} rows): "
                "such a target truncates nothing; drop the flag"
            )
        began = time.perf_counter()
        drift = _exposure(teacher, student, val, splits["val"]["vocab"], dev, seed)
        timings["exposure"] = round(time.perf_counter() - began, 4)
        began = time.perf_counter()
        probes = _probes(teacher, student, rows, splits["val"]["vocab"], dev, seed)
        timings["probe_rows"] = round(time.perf_counter() - began, 4)
        ev = LMEvaluation(
            splits,
            conv,
            reduction,
            top_k,
            kd_dtype,
            conv.train_batch_size,
            tokenizers,
            drift,
            probes=probes,
            exposure_skipped=_ONE_SHOT if iter(val) is val else LMEvaluation.exposure_skipped,
            fit_steps=budgets.fit_steps,
            sweep_steps=budgets.sweep_steps,
            probe_budget=budgets.probe_budget(main_pass),
        )
        findings = run_lm_checks(ev, debug)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    run = _run(ev, dev, teacher_spec, student_spec, time.perf_counter() - start)
    run["timings"] = {**timings, **{f"check_{f.id}": round(f.seconds, 4) for f in findings}}
    rows = [f.to_dict() for f in findings]
    causes = rank(rows, run, name=CATALOGUE, context={"applies": {"always"}})
    return Diagnosis(
        run=run,
        metrics={name: _contract_metrics(m) for name, m in splits.items()},
        checks=findings,
        causes=causes,
        verdict=lm_verdict(rows, causes, splits),
        notes=[NOTE, *_notes(ev)],
        details={
            "lm": {name: _lm_details(m) for name, m in splits.items()},
            "per_class": {},
            "checks": {f.id: f.details for f in findings if f.details},
        },
    )


def validate_lm_options(
    reduction: str, top_k: int | None, kd_dtype: str, train_batch_size: int | None
) -> None:
    """The causal-LM loss facts as stated; a bad one is one clear line (exit 2)."""
    if reduction not in REDUCTIONS:
        raise UserError(
            f"--kd-reduction for causal LMs must be one of {', '.join(REDUCTIONS)}, got {reduction!r}"
        )
    if reduction == "sum" and train_batch_size is None:
        raise UserError(
            "--kd-reduction sum scales the KD term by the training batch: pass --train-batch-size B"
        )
    if top_k is not None and top_k < 1:
        raise UserError(f"--teacher-top-k must be a positive integer, got {top_k}")
    if kd_dtype not in DTYPES:
        raise UserError(f"--kd-dtype must be one of {', '.join(DTYPES)}, got {kd_dtype!r}")


def _pad_id(tokenizers: dict, train: Iterable) -> int | None:
    """The pad token: the tokenizers' pad (else eos) id, or the most common id under a zero
    attention mask in the first train batch (when the loader can be read twice); None if no padding."""
    for role in ("student", "teacher"):
        ids = (tokenizers.get(role) or {}).get("special_ids") or {}
        if ids.get("pad") is not None:
            return int(ids["pad"])
    if iter(train) is train:  # a one-shot stream: never consume it here
        return None
    for batch in itertools.islice(train, 1):
        ids, mask, _ = lm_batch(batch, "train", 0)
        padded = ids[~mask]
        if padded.numel():
            return int(torch.mode(padded).values)
    return None


def _exposure(teacher, student, val: Iterable, vocab: int, dev, seed: int) -> dict | None:
    if iter(val) is val:
        return None
    batches = [lm_batch(b, "val", i) for i, b in enumerate(itertools.islice(val, 8))]
    return exposure(teacher, student, batches, vocab=vocab, device=dev, seed=seed)


_ONE_SHOT = "the val loader is a one-shot stream (a generator): kddoctor never reads it twice"


def _probes(teacher, student, rows: dict, vocab: int, dev, seed: int) -> Probes | None:
    """The probes on the rows the main pass sampled (None when a split kept no row)."""
    tensors = {name: sample.tensors() for name, sample in rows.items()}
    if None in tensors.values():
        return None
    return Probes(teacher, student, tensors["train"], tensors["val"], vocab=vocab, device=dev, seed=seed)


def lm_verdict(rows: list[dict], causes: list[dict], splits: dict) -> dict:
    """Likely causes, else healthy: a smaller student is always some tokens behind its teacher, so a
    gap without a measured mechanism is the expected price of size, not an unexplained failure."""
    gap = gap_strength(
        {r["id"]: r["evidence"] for r in rows if r["status"] in ("pass", "warn", "fail")}, CATALOGUE
    )
    likely = [c for c in causes if c["score"] >= LIKELY]
    if likely:
        top = likely[0]
        return {
            "gap": gap,
            "kind": "likely",
            "lead": top["id"],
            "sentence": f"Most likely: {top['title']} ({top['score']:.2f}; {top['mechanism_title']}) — "
            f"{top['evidence'][0]}",
        }
    va, tr = splits["val"], splits["train"]
    flagged = [r["id"] for r in rows if r["status"] in ("warn", "fail")]
    if flagged:
        top = causes[0]
        lead = f"{len(flagged)} check(s) flag something ({', '.join(flagged)}), but no cause reaches {LIKELY}"
        lead += f" (the strongest: {top['id']}, {top['score']:.2f})" if top["score"] > 0 else ""
    else:
        lead = "no check found a fault"
    return {
        "gap": gap,
        "kind": "healthy",
        "lead": None,
        "sentence": f"No likely cause: {lead}; token agreement {va['agreement']:.1%} on val and "
        f"{tr['agreement']:.1%} on train, KL(t||s) {va['kl']:.3f} nats/token on val",
    }


def _contract_metrics(m: dict) -> dict:
    """results.json's metrics block, per counted token, plus the LM extras."""
    n = m["tokens"]
    models = {
        r: {k: m[r][k] for k in ("loss", "acc", "ece", "perplexity", "entropy")}
        for r in ("teacher", "student")
    }
    ci = {f"{r}_acc": wilson_interval(m[r]["acc"] * n, n) for r in ("teacher", "student")}
    ci["agreement"] = wilson_interval(m["agreement"] * n, n)
    return {
        **models,
        "agreement": m["agreement"],
        "kl": m["kl"],
        "top_k_overlap": m["top_k_overlap"],
        "n": n,
        "excluded_nonfinite": 0,
        "ci95": ci,
    }


def _lm_details(m: dict) -> dict:
    return {
        "agreement_by_position": m["agreement_by_position"],
        "top_k_overlap": m["top_k_overlap"],
        "facts": {k: v for k, v in m["facts"].items() if k != "precision"},
    }


def lm_convention_sentence(ev: LMEvaluation) -> str:
    """The KD objective as stated, with the KD share it really had at the measured sequence lengths."""
    conv, ft = ev.convention, ev.splits["train"]["facts"]
    share = kd_shares(ev)[2]
    t2 = f"KD multiplied by T²={conv.temperature**2:g}" if conv.t2 else "KD not multiplied by T² (--no-t2)"
    red = {
        "token": "KL averaged per counted token",
        "batchmean": "KL summed over tokens and divided by the batch ('batchmean' on [B, L, V])",
        "mean": "KL averaged over every [B, L, V] element ('mean')",
        "sum": f"KL summed over [B, L, V] and training batches of {ev.train_batch_size}",
    }[ev.reduction]
    top = f", teacher target truncated to its top {ev.top_k}" if ev.top_k else ""
    return (
        f"{conv.formula()} with T={conv.temperature:g}, {t2}, {red}{top}, KD computed in {ev.kd_dtype}; "
        f"at {ft['tokens_per_sequence']:.1f} counted tokens per sequence the KD term carries {share:.0%} "
        "of the loss"
    )


def _run(ev: LMEvaluation, dev, teacher: str, student: str, seconds: float) -> dict:
    conv, splits = ev.convention, ev.splits
    convention = conv.to_dict(splits["val"]["vocab"])
    convention["sentence"] = lm_convention_sentence(ev)
    return {
        "kddoctor_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "task": "causal-lm",
        "teacher": teacher,
        "student": student,
        "alpha": conv.alpha,
        "alpha_on": conv.alpha_on,
        "temperature": conv.temperature,
        "t2": conv.t2,
        "kd_reduction": ev.reduction,
        "teacher_top_k": ev.top_k,
        "kd_dtype": ev.kd_dtype,
        "convention": convention,
        "vocab": splits["val"]["vocab"],
        "n": {name: m["tokens"] for name, m in splits.items()},
        "sequences": {name: m["facts"]["sequences"] for name, m in splits.items()},
        "seconds": round(seconds, 3),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def _notes(ev: LMEvaluation) -> list[str]:
    out = []
    va = ev.splits["val"]
    if va["teacher_vocab"] != va["student_vocab"]:
        out.append(
            f"vocabularies differ ({va['teacher_vocab']:,} vs {va['student_vocab']:,}): compared on the "
            f"first {va['vocab']:,} rows (--allow-vocab-truncation)"
        )
    if ev.exposure is None:
        out.append(
            "exposure bias not measured: the val loader is a one-shot stream or its sequences are short"
        )
    return out


__all__ = ["diagnose_lm", "lm_verdict", "validate_lm_options"]
