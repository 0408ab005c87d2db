"""Causal-LM main pass vs a raw teacher + student forward, and its memory as the vocabulary grows.

(a) raw: teacher and student forward over the same batches, both outputs held at once as in any KD
    step, nothing else (inference mode);
(b) kddoctor's LM main pass (`evaluate_lm`: token metrics in fp32 vocabulary chunks, the LM facts).
Throughput: a and b alternate `--repeats` times at vocabulary V in this process; medians compared.
Memory: each of a and b runs alone in a fresh subprocess at V and at 4V; the peak RSS (CPU) or peak
allocated CUDA memory above the raw pass is kddoctor's own, which chunking keeps flat while the
logits the models themselves return grow 4x.

    python bench/lm_throughput.py                      # CPU: V 8,192 and 32,768
    python bench/lm_throughput.py --device cuda --vocab 32768 --batches 64
"""

from __future__ import annotations

import argparse
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


def main_pass(teacher, student, data, device) -> None:
    evaluate_lm(teacher, student, data, name="train", device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
    raw(teacher, student, data[:2], a.device)  # warm up both paths
    main_pass(teacher, student, data[:2], a.device)
    times = {"raw": [], "main": []}
    for _ in range(a.repeats):
        for mode, fn in (("raw", raw), ("main", main_pass)):
            start = time.perf_counter()
            fn(teacher, student, data, a.device)
            times[mode].append(time.perf_counter() - start)
    tokens = a.batches * a.batch * a.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "tokens": tokens,
        "raw_tokens_per_s": tokens / med["raw"],
        "main_tokens_per_s": tokens / med["main"],
        "ratio": med["main"] / med["raw"],
    }


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
    m = memory(a)
    v, v4 = a.vocab, 4 * a.vocab
    print(
        f"peak memory of the pass above its start: raw {m['peak_mib'][f'raw_{v}']:.0f} -> "
        f"{m['peak_mib'][f'raw_{v4}']:.0f} MiB, main {m['peak_mib'][f'main_{v}']:.0f} -> "
        f"{m['peak_mib'][f'main_{v4}']:.0f} MiB as V grows {v:,} -> {v4:,}; kddoctor's own (main - raw): "
        f"{m['overhead_mib'][v]:.0f} -> {m['overhead_mib'][v4]:.0f} MiB"
    )
    print(json.dumps({"throughput": t, "memory": m}))


if __name__ == "__main__":
    main()
