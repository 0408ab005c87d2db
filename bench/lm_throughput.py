"""Causal-LM main pass vs a raw teacher + student forward, and its memory as the vocabulary grows.

(a) raw: teacher and student forward over the same batches, both outputs held at once as in any KD
    step, nothing else (inference mode);
(b) kddoctor's LM main pass (`evaluate_lm`: token metrics in fp32 vocabulary chunks, the LM facts).
(c) inside one more main pass, the time spent on what only the text-parity checks read (the streamed
    token statistics, the pooled hidden states and their row keys), and the domain classifier those
    checks then fit on the pooled rows.
(d) the token metrics of one chunk of logits (4M on a CPU) at V and 4V, side by side: as written in
    textbook PyTorch (fresh tensors, log_softmax, topk, argmax, three products) and as the pass computes
    them (in place in buffers kept across chunks, top-k and argmax from block maxima), with the largest
    difference between their sums.
Throughput: a and b alternate `--repeats` times at vocabulary V in this process; medians compared.
Memory: each of a and b runs alone in a fresh subprocess at V and at 4V; the peak RSS (CPU) or peak
allocated CUDA memory above the raw pass is kddoctor's own, which chunking keeps flat while the
logits the models themselves return grow 4x.

    python bench/lm_throughput.py                      # CPU: V 8,192 and 32,768
    python bench/lm_throughput.py --device cuda --vocab 32768 --batches 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRSS  # noqa: E402

from kddoctor.lm.engine import evaluate_lm, lm_batch  # noqa: E402
from kddoctor.metrics.tokens import TokenMetrics, chunk_elems_for  # noqa: E402
from kddoctor.zoo.tiny_lm import TinyGPT  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


SHAPES = (256, 4, 128, 2)  # teacher width, layers, student width, layers (--shapes)


def setup(vocab: int, batches: int, batch: int, seq: int, device: str):
    torch.manual_seed(0)
    tw, tl, sw, sl = SHAPES
    teacher = TinyGPT(width=tw, layers=tl, heads=4, vocab=vocab, seq=seq).to(device).eval()
    student = TinyGPT(width=sw, layers=sl, heads=4, vocab=vocab, seq=seq).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    data = []
    for _ in range(batches):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return teacher, student, data


def raw(teacher, student, data, device) -> None:
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        for i, b in enumerate(data):
            ids, mask, _ = (v.to(device, non_blocking=cuda) for v in lm_batch(b, "train", i))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                t = teacher(input_ids=ids, attention_mask=mask)  # both held, as in any KD step
                s = student(input_ids=ids, attention_mask=mask)
            del t, s
    if cuda:
        torch.cuda.synchronize()


def _classes(vocab: int):
    """A token-class table as a tokenizer's strings give one ([V, 8] bool, seeded): the per-row class
    statistic streams from it."""
    return torch.rand(vocab, 8, generator=torch.Generator().manual_seed(2)) < 0.1


def main_pass(teacher, student, data, device) -> None:
    table = _classes(teacher.head.out_features).numpy()  # TinyGPT's vocabulary head
    evaluate_lm(teacher, student, data, name="train", device=device, token_classes=table)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def _timed_text_parity(device: str, spent: list):
    """Time what the pass does only for the text-parity checks (the streamed token statistics, the pooled
    hidden states and their row keys), synchronized on CUDA so the kernels count, summed into `spent`."""
    from kddoctor.lm.engine import SequenceKeys
    from kddoctor.lm.features import PooledFeatures
    from kddoctor.lm.text_stats import TextStats

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    targets = [(TextStats, "update"), (PooledFeatures, "offer"), (SequenceKeys, "project")]
    saved = [getattr(cls, name) for cls, name in targets]

    def timed(fn):
        def run(*a, **k):
            sync()
            began = time.perf_counter()
            out = fn(*a, **k)
            sync()
            spent.append(time.perf_counter() - began)
            return out

        return run

    for (cls, name), fn in zip(targets, saved, strict=True):
        setattr(cls, name, timed(fn))
    try:
        yield
    finally:
        for (cls, name), fn in zip(targets, saved, strict=True):
            setattr(cls, name, fn)


def text_parity_share(teacher, student, data, device) -> float:
    """The share of a main pass spent on the text-parity inputs (one timed pass)."""
    spent: list = []
    with _timed_text_parity(device, spent):
        began = time.perf_counter()
        main_pass(teacher, student, data, device)
        total = time.perf_counter() - began
    return sum(spent) / total


def classifier_seconds(teacher, student, data, device) -> tuple[float, float]:
    """The domain classifier (covariate_shift) on the pooled rows of two halves of the batches, with
    scikit-learn imported (seconds), and the import itself (once a process; a diagnose pays it too)."""
    import numpy as np

    began = time.perf_counter()
    from kddoctor.checks.covariate_shift import domain_auc

    tiny = np.random.default_rng(0).normal(size=(20, 2))
    domain_auc(tiny, tiny + 1, 0)  # its imports
    imported = time.perf_counter() - began
    half = len(data) // 2
    feats = [
        evaluate_lm(teacher, student, part, name=name, device=device)["features"]
        for name, part in (("train", data[:half]), ("val", data[half:]))
    ]
    start = time.perf_counter()
    for m in ("teacher", "student"):
        domain_auc(feats[0][m], feats[1][m], 0)
    return time.perf_counter() - start, imported


def one(mode: str, vocab: int, a) -> dict:
    """Run one pass alone (a subprocess of the memory measurement); its peak memory above the start."""
    teacher, student, data = setup(vocab, a.batches, a.batch, a.seq, a.device)
    fn = raw if mode == "raw" else main_pass
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(teacher, student, data, a.device)
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    with PeakRSS() as rss:
        start = rss_mib()
        fn(teacher, student, data, a.device)
    return {"peak_mib": rss.peak - start}


def throughput(a) -> dict:
    teacher, student, data = setup(a.vocab, a.batches, a.batch, a.seq, a.device)
    raw(teacher, student, data[:2], a.device)  # warm up every path
    main_pass(teacher, student, data[:2], a.device)
    times = {"raw": [], "main": []}
    for _ in range(a.repeats):
        for mode, fn in (("raw", raw), ("main", main_pass)):
            start = time.perf_counter()
            fn(teacher, student, data, a.device)
            times[mode].append(time.perf_counter() - start)
    tokens = a.batches * a.batch * a.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    parity = text_parity_share(teacher, student, data, a.device)
    classifier_s, import_s = classifier_seconds(teacher, student, data, a.device)
    return {
        "tokens": tokens,
        "raw_tokens_per_s": tokens / med["raw"],
        "main_tokens_per_s": tokens / med["main"],
        "ratio": med["main"] / med["raw"],
        "text_parity_in_pass": parity,
        "classifier_s": classifier_s,
        "sklearn_import_s": import_s,
        "main_s": med["main"],
    }


def _textbook(t: torch.Tensor, s: torch.Tensor, k: int = 5) -> dict:
    """One chunk's token sums as plain PyTorch writes them (every step a fresh [n, V] tensor)."""
    F = torch.nn.functional
    logp_t, logp_s = F.log_softmax(t, -1), F.log_softmax(s, -1)
    p_t = logp_t.exp()
    top_t, top_s = t.topk(k, -1).indices, s.topk(k, -1).indices
    pred_t, pred_s = t.argmax(-1), s.argmax(-1)
    h_t, cross = -(p_t * logp_t).sum(-1), -(p_t * logp_s).sum(-1)
    h_s = -(logp_s.exp() * logp_s).sum(-1)
    overlap = (top_t[:, :, None] == top_s[:, None, :]).any(-1).float().sum(-1) / k
    return {
        "agree": (pred_t == pred_s).sum(),
        "kl": (cross - h_t).sum(),
        "t_entropy": h_t.sum(),
        "s_entropy": h_s.sum(),
        "topk": overlap.sum(),
    }


def chunk_metrics(a, repeats: int = 20) -> list[dict]:
    """(d): ms per chunk of the textbook sums and of TokenMetrics' own, at V and 4V."""
    out = []
    for vocab in (a.vocab, 4 * a.vocab):
        n = chunk_elems_for(a.device) // vocab
        g = torch.Generator().manual_seed(vocab)
        t = (3 * torch.randn(1, n + 1, vocab, generator=g)).to(a.device)
        s = t + 2 * torch.randn(1, n + 1, vocab, generator=g).to(a.device)
        labels = torch.zeros(1, n + 1, dtype=torch.long, device=a.device)
        m = TokenMetrics(a.device)
        ms = {
            # the textbook's chunk is copied out as the pass's gather copies its own
            "textbook": _ms(lambda t=t, s=s, n=n: _textbook(t[0, :n].clone(), s[0, :n].clone()), a, repeats),
            "kddoctor": _ms(lambda t=t, s=s, y=labels, m=m: m.update(t, s, y), a, repeats),
        }
        ref, m = _textbook(t[0, :n], s[0, :n]), TokenMetrics(a.device)
        m.update(t, s, labels)
        diff = max(abs(float(m.sums[k]) - float(v)) / max(abs(float(v)), 1.0) for k, v in ref.items())
        out.append(
            {"vocab": vocab, "tokens": n, **ms, "ratio": ms["textbook"] / ms["kddoctor"], "rel_diff": diff}
        )
    return out


def _ms(fn, a, repeats: int) -> float:
    """Milliseconds a call of fn takes, after one warm-up call."""
    fn()
    _sync(a.device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(a.device)
    return (time.perf_counter() - start) / repeats * 1000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory(a) -> dict:
    out = {}
    for vocab in (a.vocab, 4 * a.vocab):
        for mode in ("raw", "main"):
            cmd = [sys.executable, __file__, "--one", mode, "--vocab", str(vocab), "--device", a.device]
            cmd += ["--batches", str(a.batches), "--batch", str(a.batch), "--seq", str(a.seq)]
            cmd += ["--shapes", a.shapes]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out[f"{mode}_{vocab}"] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    v, v4 = a.vocab, 4 * a.vocab
    over = {x: out[f"main_{x}"] - out[f"raw_{x}"] for x in (v, v4)}
    return {"peak_mib": out, "overhead_mib": over, "raw_growth": out[f"raw_{v4}"] / out[f"raw_{v}"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", choices=("raw", "main"))
    ap.add_argument("--shapes", default="256,4,128,2", help="teacher width,layers,student width,layers")
    a = ap.parse_args()
    global SHAPES
    SHAPES = tuple(int(x) for x in a.shapes.split(","))
    if a.one:
        print(json.dumps(one(a.one, a.vocab, a)))
        return
    t = throughput(a)
    print(
        f"throughput at V={a.vocab:,}, shapes {a.shapes}, {t['tokens']:,} tokens, {a.device}: "
        f"raw {t['raw_tokens_per_s']:,.0f} tok/s, main pass {t['main_tokens_per_s']:,.0f} tok/s -> "
        f"{t['ratio']:.2f}x raw (target <= 1.15)"
    )
    print(
        f"text-parity inputs streamed in the pass: {t['text_parity_in_pass']:.1%} of the main pass; the "
        f"domain classifier on its pooled rows: {t['classifier_s']:.2f} s = "
        f"{t['classifier_s'] / t['main_s']:.1%} of the main pass (target for both together <= 5 %), and "
        f"{t['sklearn_import_s']:.2f} s once to import scikit-learn"
    )
    chunks = chunk_metrics(a)
    for c in chunks:
        print(
            f"token metrics of one chunk ({c['tokens']:,} tokens x V {c['vocab']:,}): textbook "
            f"{c['textbook']:.1f} ms, kddoctor {c['kddoctor']:.1f} ms -> {c['ratio']:.2f}x faster; "
            f"largest relative difference of their sums {c['rel_diff']:.1e}"
        )
    m = memory(a)
    v, v4 = a.vocab, 4 * a.vocab
    print(
        f"peak memory of the pass above its start: raw {m['peak_mib'][f'raw_{v}']:.0f} -> "
        f"{m['peak_mib'][f'raw_{v4}']:.0f} MiB, main {m['peak_mib'][f'main_{v}']:.0f} -> "
        f"{m['peak_mib'][f'main_{v4}']:.0f} MiB as V grows {v:,} -> {v4:,}; kddoctor's own (main - raw): "
        f"{m['overhead_mib'][v]:.0f} -> {m['overhead_mib'][v4]:.0f} MiB"
    )
    print(json.dumps({"throughput": t, "chunks": chunks, "memory": m}))


if __name__ == "__main__":
    main()
