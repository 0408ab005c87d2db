"""Token-level teacher/student metrics for causal LMs, streamed in fixed-size state.

The groundwork of causal-LM diagnosis: on the tokens a causal-LM loss counts (labels != -100, each
position predicting the next token, as Hugging Face models shift them), both models' NLL and top-1
accuracy, their agreement, top-k overlap, KL(t||s) and entropies, 15-bin reliability histograms and
agreement per position in the sequence. Everything is computed in fp32 on chunks of counted tokens,
so a [B, L, V] batch in bf16 is never materialized in fp32 (a chunk holds at most `chunk_elems`
floats: 150k-vocabulary rows are taken a few at a time). The reliability bins and the ECE are the image
metrics' own (`functional.bin_index`, `functional.ece_from_bins`), so one binning serves both tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .functional import N_BINS, bin_index, ece_from_bins

__all__ = ["IGNORE", "N_BINS", "TokenMetrics", "counted_chunks"]

IGNORE = -100  # the label Hugging Face collators give masked (pad, prompt) tokens
_SUMS = (
    "tokens",
    "t_nll",
    "s_nll",
    "t_correct",
    "s_correct",
    "agree",
    "kl",
    "t_entropy",
    "s_entropy",
    "topk",
    "nll_diff_sq",
)


def chunk_rows(chunk_elems: int, vocab: int) -> int:
    """Counted tokens per chunk: as many [V] rows as `chunk_elems` logits hold (at least one)."""
    return max(1, chunk_elems // max(vocab, 1))


def counted_chunks(labels: torch.Tensor, chunk_elems: int, *logits: torch.Tensor, out=None):
    """The counted rows of [B, L, V] logits (position i predicting label i+1), gathered one chunk of at
    most `chunk_elems` values at a time and cast to fp32, so [N, V] is never copied whole.
    Yields (one [n, V] chunk per logits tensor, their labels, their positions). With `out` (one fp32
    [chunk_rows(chunk_elems, V), V] buffer per logits tensor) each chunk is gathered into its
    buffer's first n rows instead of a fresh tensor: the next chunk overwrites it."""
    target = labels[:, 1:]
    counted = target != IGNORE
    y = target[counted]
    rows, pos = torch.nonzero(counted).unbind(1)
    step = chunk_rows(chunk_elems, logits[0].shape[-1])
    for i in range(0, len(y), step):
        r, p = rows[i : i + step], pos[i : i + step]
        if out is None:
            chunks = tuple(x[r, p].float() for x in logits)
        else:
            chunks = tuple(_gather(x, r, p, buf[: len(r)]) for x, buf in zip(logits, out, strict=True))
        yield chunks, y[i : i + step], p


def _gather(x: torch.Tensor, r: torch.Tensor, p: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """x[r, p] written into the fp32 buffer `buf`: an index_select on x's [B * L, V] view where its first
    two dimensions flatten without a copy (the model's own logits, vocabulary-sliced or not)."""
    if x.stride(0) != x.shape[1] * x.stride(1):
        return buf.copy_(x[r, p])
    flat, idx = x.flatten(0, 1), r * x.shape[1] + p
    if x.dtype == buf.dtype:
        return torch.index_select(flat, 0, idx, out=buf)
    return buf.copy_(flat.index_select(0, idx))


TOP_BLOCK = 64  # top-k ids are searched in the k blocks of this many ids with the largest maxima


def top_ids(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's top-k ids ([n, k], in no particular order), its maximum and the first id holding it
    (the lowest on ties, as argmax), from one pass over the row: its maxima over blocks of TOP_BLOCK ids.
    The top k is a topk over the k blocks with the largest maxima (and the ids past the last whole
    block), which hold a top-k set: a block holding one of the k largest values has a maximum at least
    that large, and at most k - 1 blocks have a larger one; ties are broken arbitrarily, as topk's are.
    Against topk and max on a chunk of 4M logits (2-core CPU): 2.2x faster at V 4k, 4-6x at 32k-150k;
    blocks of 32 or 128 ids were slower at every one of these vocabularies."""
    n, v = x.shape
    blocks = v // TOP_BLOCK
    if blocks <= k:
        top, (best, first) = x.topk(k, -1).indices, x.max(-1)
        return top, best, first
    edge = blocks * TOP_BLOCK
    head = x[:, :edge].view(n, blocks, TOP_BLOCK)
    maxima = head.amax(-1)
    pick = maxima.topk(k, -1).indices
    vals = head.gather(1, pick[:, :, None].expand(n, k, TOP_BLOCK)).view(n, k * TOP_BLOCK)
    ids = (pick[:, :, None] * TOP_BLOCK + torch.arange(TOP_BLOCK, device=x.device)).view(n, k * TOP_BLOCK)
    tail = x[:, edge:]  # the ids past the last whole block: always candidates, and a last block of maxima
    if edge < v:
        vals, ids = (
            torch.cat([vals, tail], 1),
            torch.cat([ids, torch.arange(edge, v, device=x.device).expand(n, -1)], 1),
        )
        maxima = torch.cat([maxima, tail.amax(-1, keepdim=True)], 1)
    top = ids.gather(1, vals.topk(k, -1).indices)
    # the first block holding the row's maximum (argmax: the first on ties), then the first id in it
    best, block = maxima.max(-1)
    inside = head.gather(1, block.clamp_max(blocks - 1)[:, None, None].expand(n, 1, TOP_BLOCK))[:, 0]
    first = block * TOP_BLOCK + inside.argmax(-1)
    if edge < v:
        first = torch.where(block == blocks, edge + tail.argmax(-1), first)
    return top, best, first


def _log_softmax_(x: torch.Tensor, top: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(x) in place over x's rows, given each row's maximum `top`, and exp(x - top) into `e`
    (the probabilities times z): (log-probabilities, the rows' z). Four passes, no fresh [n, V] tensor."""
    z = torch.exp(x.sub_(top[:, None]), out=e).sum(-1)  # (an out-of-place sub then exp_: 1.5x slower)
    return x.sub_(z.log()[:, None]), z


def _dot(a: torch.Tensor, b: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two [N, V] chunks (their product written into `tmp`)."""
    return torch.mul(a, b, out=tmp).sum(-1)


CPU_CHUNK = 2**22  # logits per chunk on a CPU (4M fp32 values: 16 MiB, cache-friendly)
GPU_CHUNK = 2**26  # at most this many on a GPU: fewer, larger kernels (a 150k vocabulary: 440 tokens)


def chunk_elems_for(device: torch.device | str) -> int:
    """How many logits one chunk of the fp32 metrics holds: 4M on a CPU; on a GPU up to 64M, while a
    dozen fp32 chunks (the metrics' five buffers and their temporaries, with room to spare) fit in a
    sixteenth of the free memory (kernel launches, not arithmetic, bound small chunks there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_CHUNK
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(GPU_CHUNK, max(CPU_CHUNK, free // (16 * 4 * 12))))


class TokenMetrics:
    """update(teacher logits, student logits, labels) per batch; compute() once; merge() across ranks."""

    def __init__(
        self, device: torch.device | str = "cpu", *, top_k: int = 5, chunk_elems: int | None = None
    ) -> None:
        self.device, self.top_k = torch.device(device), top_k
        self.chunk_elems = chunk_elems or chunk_elems_for(self.device)
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in _SUMS}
        self.bins = {
            f"{m}_{k}": torch.zeros(N_BINS, dtype=torch.float64, device=self.device)
            for m in ("t", "s")
            for k in ("count", "conf", "correct")
        }
        self.position = {
            k: torch.zeros(0, dtype=torch.float64, device=self.device) for k in ("count", "agree")
        }
        self._work: list[torch.Tensor] | None = None

    def update(
        self, t_logits: torch.Tensor, s_logits: torch.Tensor, labels: torch.Tensor, on_chunk=None
    ) -> None:
        """Add one batch of [B, L, V] logits and [B, L] labels (shifted here: position i predicts i+1).

        `on_chunk(logp_t, logp_s)`, when given, sees every fp32 chunk's log-softmaxes (the LM facts
        reuse them instead of a second pass over the vocabulary); they live in buffers the next chunk
        overwrites."""
        if t_logits.shape != s_logits.shape:
            raise ValueError(f"teacher logits {list(t_logits.shape)} vs student {list(s_logits.shape)}")
        work = self._buffers(t_logits.shape[-1])
        for (t, s), y, pos in counted_chunks(labels, self.chunk_elems, t_logits, s_logits, out=work[:2]):
            self._chunk(t, s, y, pos, [b[: len(y)] for b in work[2:]], on_chunk)

    def _buffers(self, vocab: int) -> list[torch.Tensor]:
        """Five fp32 [rows, V] buffers, one chunk each, kept across batches: the two gathered chunks and
        three for the arithmetic, which runs in place. A fresh 16 MiB tensor costs a CPU its page faults
        on every chunk (they doubled the metrics' time on the 2-core machine); a GPU's caching
        allocator would reuse the memory anyway, so there this only saves the allocator's work."""
        rows = chunk_rows(self.chunk_elems, vocab)
        if self._work is None or self._work[0].shape != (rows, vocab):
            self._work = [torch.empty(rows, vocab, device=self.device) for _ in range(5)]
        return self._work

    def _chunk(self, t, s, y, pos, work, on_chunk=None) -> None:
        """One chunk of fp32 logits (overwritten: t and s become the log-softmaxes) into the sums;
        `work`: three fp32 buffers of the chunk's shape."""
        e_t, e_s, tmp = work
        k = min(self.top_k, t.shape[-1])
        (top_t, max_t, pred_t), (top_s, max_s, pred_s) = top_ids(t, k), top_ids(s, k)
        logp_t, z_t = _log_softmax_(t, max_t, e_t)
        logp_s, z_s = _log_softmax_(s, max_s, e_s)
        overlap = (top_t[:, :, None] == top_s[:, None, :]).any(-1).float().sum(-1) / k
        agree = (pred_t == pred_s).double()
        # the probabilities are e / z: each dot is divided by z once it is a number a row
        h_t = -_dot(e_t, logp_t, tmp) / z_t
        cross = -_dot(e_t, logp_s, tmp) / z_t
        h_s = -_dot(e_s, logp_s, tmp) / z_s
        t_nll, s_nll = -logp_t.gather(1, y[:, None]), -logp_s.gather(1, y[:, None])
        add = {
            "tokens": float(len(y)),
            "t_nll": t_nll.sum(),
            "s_nll": s_nll.sum(),
            "nll_diff_sq": ((s_nll - t_nll).double() ** 2).sum(),
            "t_correct": (pred_t == y).sum(),
            "s_correct": (pred_s == y).sum(),
            "agree": agree.sum(),
            "kl": (cross - h_t).sum(),
            "t_entropy": h_t.sum(),
            "s_entropy": h_s.sum(),
            "topk": overlap.sum(),
        }
        for key, value in add.items():
            self.sums[key] += value
        for m, logp, pred in (("t", logp_t, pred_t), ("s", logp_s, pred_s)):
            conf = logp.gather(1, pred[:, None]).squeeze(1).double().exp()
            b = bin_index(conf)
            self.bins[f"{m}_count"].index_add_(0, b, torch.ones_like(conf))
            self.bins[f"{m}_conf"].index_add_(0, b, conf)
            self.bins[f"{m}_correct"].index_add_(0, b, (pred == y).double())
        self._positions(pos, agree)
        if on_chunk is not None:
            on_chunk(logp_t, logp_s)

    def _positions(self, pos: torch.Tensor, agree: torch.Tensor) -> None:
        need = int(pos.max()) + 1 if len(pos) else 0  # one sync per chunk, bounded by the context length
        if need > len(self.position["count"]):
            for k, v in self.position.items():
                self.position[k] = torch.cat([v, v.new_zeros(need - len(v))])
        self.position["count"].index_add_(0, pos, torch.ones_like(agree))
        self.position["agree"].index_add_(0, pos, agree)

    def merge(self, other: TokenMetrics) -> TokenMetrics:
        """Add another accumulator's state (another rank's, or another part of the stream)."""
        for k in self.sums:
            self.sums[k] += other.sums[k]
        for k in self.bins:
            self.bins[k] += other.bins[k]
        for k in self.position:
            a, b = self.position[k], other.position[k]
            n = max(len(a), len(b))
            self.position[k] = F.pad(a, (0, n - len(a))) + F.pad(b, (0, n - len(b)))
        return self

    def all_reduce(self, group=None) -> TokenMetrics:
        """Sum this accumulator over the ranks of a torch.distributed group (gloo or nccl: the state lives
        on `self.device`), in place, so every rank then holds the whole stream's state. The per-position
        arrays may differ in length across ranks: the longest is agreed first, the others zero-padded."""
        import torch.distributed as dist

        keys = list(self.sums)
        flat = torch.cat([torch.stack([self.sums[k] for k in keys]), *self.bins.values()])
        dist.all_reduce(flat, group=group)
        for i, k in enumerate(keys):
            self.sums[k] = flat[i].clone()
        for k, v in zip(self.bins, flat[len(keys) :].split(N_BINS), strict=True):
            self.bins[k] = v.clone()
        length = torch.tensor([len(self.position["count"])], dtype=torch.int64, device=self.device)
        dist.all_reduce(length, op=dist.ReduceOp.MAX, group=group)
        n = int(length)
        pos = torch.stack([F.pad(v, (0, n - len(v))) for v in self.position.values()])
        dist.all_reduce(pos, group=group)
        for k, v in zip(self.position, pos, strict=True):
            self.position[k] = v.clone()
        return self

    def compute(self) -> dict:
        """Per counted token: NLL, perplexity, top-1 accuracy, ECE of both models; agreement, top-k
        overlap, KL(t||s) and entropies; agreement per position (None where no token was counted)."""
        s = {k: float(v) for k, v in self.sums.items()}
        n = s["tokens"]
        if n == 0:
            raise ValueError("no counted tokens: every label is -100")
        diff = (s["s_nll"] - s["t_nll"]) / n
        out: dict = {
            "tokens": int(n),
            "agreement": s["agree"] / n,
            "top_k_overlap": s["topk"] / n,
            "kl": s["kl"] / n,
            # the per-token spread of student minus teacher NLL (a standard error at any effective n)
            "nll_diff_sd": max(s["nll_diff_sq"] / n - diff**2, 0.0) ** 0.5,
        }
        for m, name in (("t", "teacher"), ("s", "student")):
            nll = s[f"{m}_nll"] / n
            out[name] = {
                "loss": nll,
                "perplexity": float(torch.tensor(nll).exp()),
                "acc": s[f"{m}_correct"] / n,
                "ece": ece_from_bins(
                    self.bins[f"{m}_count"], self.bins[f"{m}_conf"], self.bins[f"{m}_correct"]
                ),
                "entropy": s[f"{m}_entropy"] / n,
            }
        count, agree = self.position["count"], self.position["agree"]
        out["agreement_by_position"] = [
            float(a / c) if c else None for a, c in zip(agree, count, strict=True)
        ]
        return out
