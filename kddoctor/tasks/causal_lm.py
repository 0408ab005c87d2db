"""Causal LMs: a row is a counted token (labels != -100, position i predicting i+1), grouped by its
position, keyed by its sequence's tokens; a sequence is the unit of sampling and of independence."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import torch

from .. import checks as _checks  # noqa: F401  (registers every battery)
from .._cache import TeacherCache
from .._dist import rank_world
from ..causes import LIKELY
from ..checks.lm_gap import nll_unread
from ..config import LM_TRAIN_SEQUENCES
from ..convention import KDConvention
from ..diagnosis import pass_timings, run_core
from ..errors import UserError
from ..lm.engine import adapt, evaluate_lm, lm_logits, sample_loader
from ..lm.evaluation import LMEvaluation, TokenSplit
from ..lm.exposure import exposure
from ..lm.facts import RowFacts
from ..lm.models import padding_reason, shared_tokenizer_size, teacher_load
from ..lm.probes import TOKENS, TRAIN_ROWS, VAL_ROWS, Probes
from ..lm.rows import RowSample
from ..lm.text_stats import token_classes
from ..metrics.functional import wilson_interval
from ..remedies import remedy_context

NOTE = "causal-LM run: every metric is per counted token (labels != -100), each position predicting the next"
LM_FEATURE_ROWS = 512  # pooled hidden-state sequences per split for the domain classifier
ONE_SHOT = "the val loader is a one-shot stream (a generator): kddoctor never reads it twice"


class CausalLMTask:
    name = "causal-lm"
    catalogue = "lm_causes.toml"
    unit = "tokens"

    def __init__(
        self,
        tokenizers: dict | None = None,
        allow_vocab_truncation: bool = False,
        vocab_text: tuple[list[str], set[int]] | None = None,
    ) -> None:
        """`tokenizers`: {"teacher": info, "student": info} from `lm.models.tokenizer_info`; `vocab_text`:
        each token id's text and the special ids (`lm.models.vocabulary_text`), for the token classes."""
        self.tokenizers, self.allow_vocab_truncation = tokenizers or {}, allow_vocab_truncation
        self.vocab_text = vocab_text

    def adapt(self, batch: object, split: str, index: int):
        return adapt(batch, split, index)

    def logits(self, out: object):
        return lm_logits(out)

    def evaluate(self, teacher, student, loaders: dict, run) -> LMEvaluation:
        """Both splits through one streaming pass each (sampled, cached, sharded as for images), then the
        exposure sampling and the probes' rows on rank 0."""
        cfg, dev = run.config, run.device
        conv = lm_convention(cfg.convention)
        rows = {
            "train": RowSample(TRAIN_ROWS, TOKENS, cfg.seed),
            "val": RowSample(VAL_ROWS, TOKENS, cfg.seed + 1),
        }
        facts = {"pad_id": _pad_id(self.tokenizers, loaders["train"])}
        classes = None
        if self.vocab_text is not None:  # the token classes, for the rows that lack one (streamed)
            strings, specials = self.vocab_text
            classes = token_classes(list(strings), specials)
        splits = {
            name: self._split(name, loaders[name], run, facts, rows[name], classes)
            for name in ("train", "val")
        }
        vocab = splits["val"]["vocab"]
        if conv.top_k is not None and conv.top_k >= vocab:
            raise UserError(
                f"--teacher-top-k {conv.top_k} is not below the vocabulary ({vocab:,} rows): "
                "such a target truncates nothing; drop the flag"
            )
        ev = LMEvaluation(
            splits,
            conv,
            cfg,
            self.tokenizers,
            fit_steps=cfg.budgets.fit_steps,
            sweep_steps=cfg.budgets.sweep_steps,
            probe_budget=cfg.budgets.probe_budget(sum(s["seconds"] for s in splits.values())),
            device=dev,
            teacher_spec=run.teacher_spec,
            student_spec=run.student_spec,
            teacher_load=teacher_load(teacher),
            vocab_text=self.vocab_text,
        )
        if classes is not None:  # computed once: the evaluation's table is this one, cut to the vocabulary
            ev.token_classes = (classes[0], classes[1][: ev.vocab])
        if rank_world()[0] == 0:
            _probe_inputs(ev, teacher, student, loaders["val"], rows, dev)
        return ev

    def _split(self, name: str, loader, run, facts: dict, rows: RowSample, classes=None) -> TokenSplit:
        cfg = run.config
        rank_, world = rank_world()
        limit, explicit = cfg.split_limit(name, default_train=LM_TRAIN_SEQUENCES)
        sampled_loader, sampled = sample_loader(loader, limit, cfg.seed, explicit)
        cache = run.teacher_cache
        tc = TeacherCache(Path(cache[0]), cache[1], f"lm-{name}", limit, rank_, world) if cache else None
        out = evaluate_lm(
            *run.models,
            sampled_loader,
            name=name,
            device=run.device,
            allow_vocab_truncation=self.allow_vocab_truncation,
            shared_vocab=shared_tokenizer_size(self.tokenizers),
            facts=facts,
            rows=rows,
            bar=run.bar,
            rank=rank_,
            world=world,
            cache=tc,
            save_logits=cfg.save_logits,
            seed=cfg.seed,
            feature_rows=min(LM_FEATURE_ROWS, cfg.budgets.feature_rows),
            token_classes=None if classes is None else classes[1],
        )
        if getattr(sampled_loader, "took_all", False):
            sampled = None  # the split held fewer sequences than the limit
        out["sampled"] = sampled
        return out

    def run_metadata(self, ev: LMEvaluation) -> dict:
        conv, splits = ev.convention, ev.splits
        run = {
            **run_core(ev, conv, ev.vocab, {name: m["local_rows"] for name, m in splits.items()}),
            "task": "causal-lm",
            "teacher_top_k": conv.top_k,
            "kd_dtype": conv.kd_dtype,
            "vocab": ev.vocab,
            "n": {name: m.n for name, m in splits.items()},
            "sequences": {name: m["facts"]["sequences"] for name, m in splits.items()},
            **ev.teacher_load,
        }
        timings = pass_timings(splits)
        timings.update(ev.timings)
        return {**run, "timings": timings}

    def metrics(self, ev: LMEvaluation) -> dict:
        return {name: _split_metrics(m) for name, m in ev.splits.items()}

    def notes(self, ev: LMEvaluation) -> list[str]:
        out, va = [NOTE], ev.val
        if ev.capture_k is not None and not ev.convention.top_k:
            out.append(
                f"the teacher is an offline top-{ev.capture_k} capture of {ev.vocab:,} ids: its metrics "
                "spread the missing mass evenly over the other ids, and the checks that need its whole "
                f"distribution are skipped ({ev.state_top_k})"
            )
        if va["teacher_vocab"] != va["student_vocab"]:
            out.append(
                f"vocabularies differ ({va['teacher_vocab']:,} vs {va['student_vocab']:,}): compared on the "
                f"first {va['vocab']:,} rows ({padding_reason(self.tokenizers, va['vocab'])})"
            )
        unread = nll_unread(ev.convention)
        if unread:
            out.append(
                f"the stated objective ({unread}) does not minimize teacher-forced NLL: how far behind its "
                "teacher the student sits in NLL is shown, but only a measured mechanism makes a verdict"
            )
        if ev.exposure is None:
            out.append(f"exposure bias not measured: {ev.exposure_skipped}")
        for name, m in ev.splits.items():
            if m.get("sampled"):
                out.append(f"{name} sequences: {m['sampled']}")
            if (m.get("teacher_cache") or {}).get("uncached"):
                out.append(
                    f"{name}: the teacher cache keeps at most {m['teacher_cache']['uncached']:,} logits a "
                    "split and this one's exceed it, so every run computes its teacher again (fewer "
                    f"--{name}-samples keep it cached)"
                )
            if m.get("logits_cut"):
                out.append(
                    f"{name}: --save-logits kept the first counted tokens only (the rest exceed the cap)"
                )
        return out

    def details(self, ev: LMEvaluation) -> dict:
        return {"lm": {name: _lm_details(m) for name, m in ev.splits.items()}, "per_class": {}}

    def logits_saved(self, ev: LMEvaluation) -> dict | None:
        if not ev.config.save_logits:
            return None
        return {f"{n}_{k}": v for n, m in ev.splits.items() for k, v in m["logits"].items() if v is not None}

    def remedy_context(self, findings: list[dict], run: dict) -> dict:
        return remedy_context(findings, {**run, "num_classes": run.get("vocab")})

    def calm_sentence(self, ev: LMEvaluation, findings: list[dict], causes: list[dict], gap: dict) -> str:
        """A smaller student is always some tokens behind its teacher: without a measured mechanism the
        LM verdict is calm, and names the checks that flag something, or the evidence of a cause below
        the bar where no check flags (a mild dose can sit there: a reader should see it)."""
        va, tr = ev.val, ev.train
        flagged = [r["id"] for r in findings if r["status"] in ("warn", "fail")]
        top = causes[0]
        if flagged:
            which = "1 check flags" if len(flagged) == 1 else f"{len(flagged)} checks flag"
            lead = f"{which} something ({', '.join(flagged)}), but no cause reaches {LIKELY}"
            lead += f" (the strongest: {top['id']}, {top['score']:.2f})" if top["score"] > 0 else ""
        elif top["score"] > 0 and top.get("evidence"):
            lead = (
                f"no check flags a fault, and the strongest lead, {top['id']} ({top['score']:.2f}), "
                f"stays below {LIKELY}: {top['evidence'][0]}"
            )
        else:
            lead = "no check found a fault"
        unread = nll_unread(ev.convention)
        aside = f"; its NLL gap makes no verdict under the stated objective ({unread})" if unread else ""
        return (
            f"No likely cause: {lead}; token agreement {va['agreement']:.1%} on val and "
            f"{tr['agreement']:.1%} on train, KL(t||s) {va['kl']:.3f} nats/token on val{aside}"
        )


def lm_convention(conv: KDConvention) -> KDConvention:
    """The stated objective as a causal-LM one: a convention built for images (the API's default) is
    read per counted token, its other choices kept."""
    if conv.task == "causal-lm":
        return conv
    return replace(
        conv, task="causal-lm", reduction="token" if conv.reduction == "batchmean" else conv.reduction
    )


def _probe_inputs(ev: LMEvaluation, teacher, student, val, rows: dict, dev) -> None:
    """Exposure sampling on a few val batches, the probes on the sampled rows, and the facts measured
    on those rows (top-k kept mass on train rows, the KD term's precision on val rows)."""
    import time

    from ..lm.offline import OfflineTeacher

    began = time.perf_counter()
    if isinstance(teacher, OfflineTeacher):
        ev.exposure_skipped = "the teacher is an offline capture: it cannot score the student's own samples"
        ev.features_skipped = "the teacher is an offline capture: it has no hidden states to classify"
        ev.capture_k = teacher.partial_k
    elif iter(val) is val:
        ev.exposure_skipped = ONE_SHOT
    else:
        vocab = ev.vocab
        batches = [_triple(b, i) for i, b in enumerate(itertools.islice(val, 8))]
        ev.exposure = exposure(teacher, student, batches, vocab=vocab, device=dev, seed=ev.config.seed)
    ev.timings["exposure"] = round(time.perf_counter() - began, 4)
    began = time.perf_counter()
    tensors = {name: sample.tensors() for name, sample in rows.items()}
    if None not in tensors.values():
        ev.probes = Probes(
            teacher,
            student,
            tensors["train"],
            tensors["val"],
            vocab=ev.vocab,
            device=dev,
            seed=ev.config.seed,
        )
        _row_facts(ev)
    ev.timings["probe_rows"] = round(time.perf_counter() - began, 4)


def _triple(batch, index: int) -> tuple:
    tb = adapt(batch, "val", index)
    return tb.ids, tb.mask, tb.labels


def _row_facts(ev: LMEvaluation) -> None:
    conv = ev.convention
    for split in ("train", "val"):
        facts = RowFacts(conv)
        for t, s, y in ev.probes.chunks(split):
            facts.kept(t, s)
            facts.precision(t, s, y)
        got = facts.compute()
        ev.splits[split]["facts"].update(
            teacher_kept_mass=got["teacher_kept_mass"],
            kept_mass_tokens=got["kept_mass_tokens"],
            truncated_negative=got["truncated_negative"],
            precision=got["precision"],
        )


def _pad_id(tokenizers: dict, train) -> int | None:
    """The pad token: the tokenizers' pad (else eos) id, or the most common id under a zero
    attention mask in the first train batch (when the loader can be read twice); None if no padding."""
    for role in ("student", "teacher"):
        ids = (tokenizers.get(role) or {}).get("special_ids") or {}
        if ids.get("pad") is not None:
            return int(ids["pad"])
    if iter(train) is train:  # a one-shot stream: never consume it here
        return None
    for batch in itertools.islice(train, 1):
        tb = adapt(batch, "train", 0)
        padded = tb.ids[~tb.mask]
        if padded.numel():
            return int(torch.mode(padded).values)
    return None


def _split_metrics(m: TokenSplit) -> dict:
    """results.json's metrics block, per counted token, plus the LM extras; the 95 % intervals at the
    split's effective n (tokens within a sequence are not independent)."""
    n, eff = m.n, m.effective_n
    models = {
        r: {k: m[r][k] for k in ("loss", "acc", "ece", "perplexity", "entropy")}
        for r in ("teacher", "student")
    }
    ci = {f"{r}_acc": wilson_interval(m[r]["acc"] * eff, eff) for r in ("teacher", "student")}
    ci["agreement"] = wilson_interval(m["agreement"] * eff, eff)
    return {
        **models,
        "agreement": m["agreement"],
        "kl": m["kl"],
        "top_k_overlap": m["top_k_overlap"],
        "n": n,
        "effective_n": eff,
        "excluded_nonfinite": 0,
        "ci95": ci,
    }


def _lm_details(m: TokenSplit) -> dict:
    return {
        "agreement_by_position": m["agreement_by_position"],
        "top_k_overlap": m["top_k_overlap"],
        "facts": {k: v for k, v in m["facts"].items() if k != "precision"},
    }
