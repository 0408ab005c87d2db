"""One streaming pass of a causal-LM teacher and student over a split, scored per counted token.

The image pass's machinery serves it: the sample (`--limit`, `--train-samples`, `--val-samples`: a
seeded subset of the dataset's sequences, or a Bernoulli sample by a content key of each sequence's
attended tokens), the teacher-output cache (checked batch by batch against a fingerprint of the ids),
torchrun sharding (rank r takes every world-th batch; the state is all-reduced and the row sample
merged), progress with sequences/s, and `--save-logits` (the counted tokens' logits, up to a cap).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .._cache import TeacherCache, batch_fingerprint
from .._sampling import expected_samples, limit_loader
from ..data import loader_batches
from ..errors import UserError
from ..metrics.tokens import IGNORE, TokenMetrics, counted_chunks
from .evaluation import TokenSplit
from .facts import LMFacts
from .features import PooledFeatures
from .models import pads_past
from .rows import RowSample
from .text_stats import TextStats

KEY_POSITIONS = 1 << 16  # per-position weights of the sequence content key (longer rows wrap around)
SAVED_LOGITS_ELEMS = 2**27  # --save-logits keeps counted-token logits up to this many values per model
CACHE_ELEMS = 2**26  # the teacher cache keeps a split's logits up to this many values (else none)


@dataclass
class TokenBatch:
    """One batch as the pass reads it: ids, attention mask (bool) and labels (-100 uncounted), [B, L]."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> TokenBatch:
        return TokenBatch(self.ids[rows], self.mask[rows], self.labels[rows])


class SequenceKeys:
    """A content key per sequence from its attended tokens: the same key whatever batch, padding width
    or loader order a sequence comes in (the image side's ContentKeys, over token ids)."""

    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed * 7919 + 17)
        self.weights = torch.randn(KEY_POSITIONS, generator=gen, dtype=torch.float64)
        self._on: dict[tuple, torch.Tensor] = {}

    def project(self, batch: TokenBatch) -> torch.Tensor:
        length, dev = batch.ids.shape[1], batch.ids.device
        w = self._on.get((length, dev))
        if w is None:  # a few positions' weights, copied once per (length, device)
            w = self._on[(length, dev)] = self.weights[torch.arange(length) % KEY_POSITIONS].to(dev)
        return (((batch.ids.double() + 1) * batch.mask.double()) * w).sum(1) / math.sqrt(max(length, 1))


def adapt(batch: object, split: str, index: int) -> TokenBatch:
    """A loader's batch (a collator mapping, or a sampled TokenBatch) as the pass reads it."""
    if isinstance(batch, tuple) and batch and isinstance(batch[0], TokenBatch):
        return batch[0]
    return TokenBatch(*lm_batch(batch, split, index))


def sampling_split(batch: object, where: str, index: int) -> tuple[TokenBatch, torch.Tensor]:
    """What the sampler needs from a batch: rows it can cut, and a per-row column."""
    tb = adapt(batch, where, index)
    return tb, tb.labels


def lm_batch(batch: object, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of one batch; labels default to input_ids where attended.

    Labels without an attention mask are refused: padding would be counted as tokens."""
    where = f"{split} batch {index}"
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        got = (
            f"a mapping with keys {', '.join(map(repr, list(batch)[:5]))}"
            if isinstance(batch, Mapping)
            else f"a {type(batch).__name__} of {len(batch)}"
            if isinstance(batch, list | tuple)
            else f"a {type(batch).__name__}"
        )
        raise UserError(
            f"{where}: a causal-LM batch is a mapping with 'input_ids' (and 'attention_mask', 'labels'), "
            f"got {got}"
        )
    ids = _tensor(batch["input_ids"], "input_ids", where)
    if ids.ndim != 2:
        raise UserError(f"{where}: input_ids must be [batch, tokens], got {list(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise UserError(f"{where}: input_ids must be integer token ids, got {ids.dtype}")
    if "labels" in batch and "attention_mask" not in batch:
        raise UserError(
            f"{where} has labels but no attention_mask: pass the mask, so padding is never counted as tokens"
        )
    mask = _tensor(batch.get("attention_mask", torch.ones_like(ids)), "attention_mask", where)
    labels = _tensor(batch["labels"], "labels", where) if "labels" in batch else None
    for key, value in (("attention_mask", mask), ("labels", labels)):
        if value is not None and value.shape != ids.shape:
            raise UserError(
                f"{where}: {key} must have the shape of input_ids {list(ids.shape)}, got {list(value.shape)}"
            )
    mask = mask.bool()
    return ids, mask, labels if labels is not None else ids.masked_fill(~mask, IGNORE)


def _tensor(value: object, key: str, where: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{where}: {key} must be a rectangular [batch, tokens] array (pad rows to one length): {e}"
        ) from None


def _forward(model: nn.Module, role: str, ids: torch.Tensor, mask: torch.Tensor, where: str) -> torch.Tensor:
    try:
        return lm_logits(model(input_ids=ids, attention_mask=mask))
    except IndexError as e:  # an embedding or position table indexed past its end
        raise UserError(
            f"{where}: the {role} raised IndexError ({e}): its token ids must be below its embedding rows "
            f"and its sequences no longer than its position table (this batch: ids up to "
            f"{int(ids.max())}, {ids.shape[1]} tokens)"
        ) from None
    except TypeError as e:
        if "input_ids" not in str(e) and "attention_mask" not in str(e):
            raise
        raise UserError(
            f"{where}: the {role}'s forward does not take the keywords a causal LM is called with ({e}): "
            "kddoctor calls model(input_ids=ids, attention_mask=mask), as Hugging Face causal LMs take them; "
            "name its forward's arguments so (it may ignore attention_mask)"
        ) from None


def lm_logits(out: object) -> torch.Tensor:
    """[B, L, V] logits from a tensor or an output with `.logits` (Hugging Face)."""
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"a causal LM must return [batch, tokens, vocab] logits, got {shape}")
    return logits


def _vocab(
    t: torch.Tensor, s: torch.Tensor, allow_truncation: bool, shared: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student over one vocabulary; padded rows (151,936 vs 152,064) when allowed, or when
    both models carry one tokenizer (`shared`: its size) whose ids all lie below both sizes: every row
    past it is padding that no text can reach."""
    vt, vs = t.shape[-1], s.shape[-1]
    if vt == vs:
        return t, s
    if not allow_truncation and not pads_past(shared, min(vt, vs)):
        raise UserError(
            f"teacher vocabulary {vt} vs student {vs}: if one only pads extra rows, pass "
            "--allow-vocab-truncation to compare the first min(V) rows; else the tokenizers differ"
        )
    v = min(vt, vs)
    return t[..., :v], s[..., :v]


def _check_alignment(ids: torch.Tensor, labels: torch.Tensor, where: str) -> bool:
    """Refuse labels that were shifted already (a second shift scores every token against the one after
    next); True once a batch had enough counted tokens to tell, so later batches skip the check."""
    counted = labels[:, :-1] != IGNORE
    if int(counted.sum()) < 16:
        return False
    same = float((labels[:, :-1] == ids[:, :-1])[counted].float().mean())
    after = float((labels[:, :-1] == ids[:, 1:])[counted].float().mean())
    if same < 0.5 and after > 0.9:
        raise UserError(
            f"{where}: the labels look shifted already ({after:.0%} of counted labels equal the next input "
            f"token, {same:.0%} the token at their own position); kddoctor shifts them as Hugging Face "
            "causal LMs do: pass labels aligned with input_ids (input_ids with -100 where not counted)"
        )
    return True


def _check_labels(labels: torch.Tensor, vocab: int, where: str) -> None:
    """Labels are -100 or token ids below the compared vocabulary (checked where the loader made them)."""
    counted = labels[labels != IGNORE]
    if not counted.numel():
        return
    low, high = int(counted.min()), int(counted.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise UserError(
            f"{where}: labels must be -100 (not counted) or token ids below the vocabulary ({vocab:,}); "
            f"found {bad}"
        )


def sample_loader(
    loader: Iterable, limit: int | None, seed: int, explicit: bool
) -> tuple[Iterable, str | None]:
    """The split, or a seeded sample of about `limit` sequences (image `limit_loader`, keyed by tokens)."""
    keys = SequenceKeys(seed)
    return limit_loader(loader, limit, seed, sampling_split, explicit=explicit, project=keys.project)


@dataclass
class PassOptions:
    """How one split's pass runs (everything but the models and the loader)."""

    device: torch.device
    allow_vocab_truncation: bool = False
    facts: dict | None = None  # LMFacts keywords (pad_id)
    rows: RowSample | None = None
    bar: object = None
    rank: int = 0
    world: int = 1
    cache: TeacherCache | None = None
    save_logits: bool = False
    seed: int = 0
    feature_rows: int = 512  # pooled hidden-state rows kept per split (the domain classifier's)
    token_classes: object = None  # [V, C] bool token-class table (text_stats.token_classes), if known
    shared_vocab: int | None = None  # the size of the one tokenizer both models carry, if they do


def evaluate_lm(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable,
    *,
    name: str,
    device: torch.device | str = "cpu",
    allow_vocab_truncation: bool = False,
    facts: dict | None = None,
    rows: RowSample | None = None,
    **options,
) -> TokenSplit:
    """Both models over one split (eval mode, no grad): TokenMetrics.compute(), the vocabulary sizes and,
    under "facts", LMFacts.compute() (`facts`: LMFacts keywords). `options`: PassOptions' other fields."""
    opts = PassOptions(torch.device(device), allow_vocab_truncation, facts, rows, **options)
    p = _TokenPass(teacher, student, opts)
    start = time.perf_counter()
    task = (
        opts.bar.add_task(f"{name}: teacher + student", total=expected_samples(loader), unit="sequences")
        if opts.bar
        else None
    )
    try:
        with torch.inference_mode():
            for index, batch in loader_batches(loader, name):
                tb = adapt(batch, name, index)
                if index % opts.world == opts.rank:
                    p.step(tb, f"{name} batch {index}")
                if task is not None:
                    opts.bar.advance(task, len(tb))
    finally:
        p.features.close()
        if task is not None:
            opts.bar.remove_task(task)
    out = p.result(name)
    out["seconds"] = time.perf_counter() - start
    return out


class _TokenPass:
    """The state of one split's pass: token metrics, LM facts, the row sample, cache and saved logits."""

    def __init__(self, teacher: nn.Module, student: nn.Module, opts: PassOptions) -> None:
        self.teacher, self.student, self.opts = teacher, student, opts
        self.cuda = opts.device.type == "cuda"
        self.metrics, self.facts = TokenMetrics(opts.device), LMFacts(opts.device, **(opts.facts or {}))
        self.text, self.keys = TextStats(opts.device, opts.seed, opts.token_classes), SequenceKeys(opts.seed)
        self.features = PooledFeatures(teacher, student, opts.feature_rows)
        self.sizes, self.aligned, self.local = (0, 0), False, 0
        self.saved: dict[str, list] | None = (
            {"teacher": [], "student": [], "targets": []} if opts.save_logits else None
        )
        self.saved_elems, self.saved_cut, self.cache_elems, self.cache_dropped = 0, False, 0, False

    def step(self, tb: TokenBatch, where: str) -> None:
        """One batch through both models, into every accumulator (no host sync on CUDA beyond the
        label checks of a loader that hands device tensors)."""
        opts = self.opts
        self.aligned = self.aligned or _check_alignment(tb.ids, tb.labels, where)
        if opts.rows is not None:
            opts.rows.add(tb.ids, tb.mask, tb.labels)
        ids, mask, labels = (v.to(opts.device, non_blocking=self.cuda) for v in (tb.ids, tb.mask, tb.labels))
        self.features.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            t_full, cached = self._teacher(tb, ids, mask, where)
            s_full = _forward(self.student, "student", ids, mask, where)
        t, s = _vocab(t_full, s_full, opts.allow_vocab_truncation, opts.shared_vocab)
        _check_labels(tb.labels, t.shape[-1], where)
        rerun = (lambda rows: self._rerun_teacher(ids[rows], mask[rows], where)) if cached else None
        self.features.offer(self.keys.project(TokenBatch(ids, mask, labels)), mask, rerun)
        self.text.update(ids, mask, labels, t.shape[-1])
        self.facts.batch(t_full, s_full, mask, labels, t.shape[-1])
        self.metrics.update(t, s, labels, on_chunk=self.facts.chunk)
        if self.saved is not None:
            self._save(t, s, labels)
        self.sizes, self.local = (t_full.shape[-1], s_full.shape[-1]), self.local + len(tb)
        del t_full, s_full, t, s  # before the next forward: never three batches of logits at once

    def _teacher(self, tb: TokenBatch, ids, mask, where: str) -> tuple[torch.Tensor, bool]:
        """The teacher's logits: from the cache where this batch's ids are unchanged (True), else computed."""
        cache = self.opts.cache
        if cache is None:  # a teacher spread over devices returns its logits on its last one
            return _forward(self.teacher, "teacher", ids, mask, where).to(ids.device), False
        digest = batch_fingerprint(torch.stack([tb.ids, tb.mask.to(tb.ids.dtype)]))
        hit = cache.lookup(len(cache.digests), digest)  # this rank's n-th batch
        if hit is not None and hit.shape[0] == ids.numel():
            cache.record(digest, hit, True)
            return hit.view(*ids.shape, -1).to(ids.device, non_blocking=self.cuda), True
        t = _forward(self.teacher, "teacher", ids, mask, where).to(ids.device)  # from its last device
        self.cache_elems += t.numel()
        if self.cache_elems > CACHE_ELEMS:  # too large to keep: this split goes uncached, and says so
            self.opts.cache, self.cache_dropped = None, True
        else:
            cache.record(digest, t.reshape(-1, t.shape[-1]).float().to("cpu", non_blocking=self.cuda), False)
        return t, False

    def _rerun_teacher(self, ids: torch.Tensor, mask: torch.Tensor, where: str) -> None:
        """The teacher on a few rows of a cached batch, for its pooled hidden states (the tap keeps them)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            _forward(self.teacher, "teacher", ids, mask, where)

    def _save(self, t: torch.Tensor, s: torch.Tensor, labels: torch.Tensor) -> None:
        """--save-logits: counted tokens' logits (fp16, on the host), up to SAVED_LOGITS_ELEMS per model."""
        for (tc, sc), y, _ in counted_chunks(labels, self.metrics.chunk_elems, t, s):
            if self.saved_elems + tc.numel() > SAVED_LOGITS_ELEMS:
                self.saved_cut = True
                return
            self.saved_elems += tc.numel()
            for key, v in (("teacher", tc.half()), ("student", sc.half()), ("targets", y)):
                self.saved[key].append(v.to("cpu", non_blocking=self.cuda))

    def _cache_report(self, cache: TeacherCache | None) -> dict | None:
        """The split's teacher-cache hits and misses; that it went uncached for its size; None unused."""
        if self.cache_dropped:
            return {"uncached": CACHE_ELEMS}
        return None if cache is None else {"hits": cache.hits, "misses": cache.misses}

    def result(self, name: str) -> TokenSplit:
        """The split's result, read back once (all-reduced across ranks under torchrun)."""
        opts = self.opts
        if self.cuda:
            torch.cuda.synchronize(opts.device)
        if opts.world > 1:
            from .._dist import max_int, merge_reservoirs

            self.metrics.all_reduce()
            self.facts.all_reduce()
            self.text.all_reduce()
            merge_reservoirs(self.features, ("reservoir",))
            self.sizes = tuple(max_int(v) for v in self.sizes)
            if opts.rows is not None:
                opts.rows.all_gather()
        if float(self.metrics.sums["tokens"]) == 0:
            raise UserError(
                f"the {name} split has no counted tokens: a label counts from a sequence's second position "
                "(each position predicts the next), so every label is -100, every sequence has one token, or "
                "the split is empty"
            )
        alignment = getattr(self.teacher, "alignment", None)
        if alignment is not None:  # an offline capture: refused before its outputs are cached
            alignment.decide()
        cache = opts.cache
        if cache is not None:
            cache.save()
        out = TokenSplit(
            **self.metrics.compute(),
            vocab=min(self.sizes),
            teacher_vocab=self.sizes[0],
            student_vocab=self.sizes[1],
            facts=self.facts.compute(),
        )
        out.update(
            text=self.text.compute(),
            features=self.features.result(),
            local_rows=self.local,
            teacher_cache=self._cache_report(cache),
        )
        if self.saved is not None:
            out["logits"] = {k: torch.cat(v).numpy() if v else None for k, v in self.saved.items()}
            out["logits_cut"] = self.saved_cut
        return out
