"""The optimal-temperature fit of the causal-LM calibration check, as it was (float64 numpy on the host,
scipy's log_softmax of the whole [tokens, V] matrix at every step of the search) against now (float64
torch on the logits' own device, a logsumexp and the target logit per step), on the same logits:
seconds of each, the ratio, and the two temperatures (the same objective and search, so they agree to
the search's tolerance). Then the logits it fits on, gathered as they were (a forward of every probe
row at once, then the first counted tokens) against now (BATCH rows at a time until there are enough):
seconds and peak memory, each variant alone in a fresh process.

    python bench/calibration_fit.py [--vocab 8192 32768] [--device cpu|cuda] [--repeats 3] [--rows 128]

The check fits on 2**24 logits per model (CALIBRATION_ELEMS): 512 tokens at a 32k vocabulary.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import statistics
import time

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from kddoctor.checks.calibration import LOG_T_BOUND, LOG_T_PRIOR, optimal_temperature
from kddoctor.checks.lm_gap import CALIBRATION_ELEMS


def numpy_fit(logits: np.ndarray, targets: np.ndarray) -> float:
    """The fit as the check ran it before: the whole log_softmax in float64 numpy, every step."""
    logits = logits.astype(np.float64)
    y = targets.astype(int)

    def objective(log_t: float) -> float:
        nll = -log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(y)), y].mean()
        return nll + LOG_T_PRIOR * log_t**2

    res = minimize_scalar(
        objective, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded", options={"xatol": 1e-4}
    )
    return float(math.exp(res.x))


def _gather(variant: str, vocab: int, rows: int, seq: int, device: str, out) -> None:
    """One variant of gathering the fit's logits, in its own process: (seconds, peak RSS MiB above start)."""
    from kddoctor.lm import probes
    from kddoctor.metrics.tokens import IGNORE
    from kddoctor.zoo.tiny_lm import TinyGPT

    torch.manual_seed(0)
    teacher = TinyGPT(vocab=vocab, width=64, layers=1, heads=2, seq=seq).to(device)
    student = TinyGPT(vocab=vocab, width=32, layers=1, heads=2, seq=seq).to(device)
    ids = torch.randint(0, vocab, (rows, seq))
    split = (ids, torch.ones_like(ids).bool(), ids.clone())
    probes.TEACHER_CACHE_ELEMS = 0  # a split too large to cache its teacher's logits
    pr = probes.Probes(teacher, student, split, split, vocab=vocab, device=torch.device(device))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if variant == "before":
        with torch.no_grad():
            ids, mask, labels = pr.rows["val"]
            s, t = pr._logits(pr.student, ids, mask), pr._teacher("val", slice(None))
            counted = labels[:, 1:] != IGNORE
            take = CALIBRATION_ELEMS // vocab
            s[counted][:take].double().cpu().numpy(), t[counted][:take].double().cpu().numpy()
    else:
        pr.counted_logits("val", CALIBRATION_ELEMS)
    _sync(device)
    out.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=128, help="probe rows of the val split")
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, medians of {args.repeats}")
    print("vocab  | tokens | numpy host s | torch s | numpy / torch | T numpy | T torch")
    for vocab in args.vocab:
        n = CALIBRATION_ELEMS // vocab
        g = torch.Generator().manual_seed(vocab)
        # a peaked, trained-looking distribution: a few large logits per row over a Gaussian floor
        logits = torch.randn(n, vocab, generator=g) * 2.0
        targets = torch.randint(0, vocab, (n,), generator=g)
        logits[torch.arange(n), targets] += 6.0 * torch.rand(n, generator=g)
        host = logits.double().numpy()
        dev = logits.to(args.device)
        t_np, t_torch, times_np, times_torch = 0.0, 0.0, [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            t_np = numpy_fit(host, targets.numpy())
            times_np.append(time.perf_counter() - start)
            _sync(args.device)
            start = time.perf_counter()
            t_torch = optimal_temperature(dev, targets.to(args.device))[0]
            _sync(args.device)
            times_torch.append(time.perf_counter() - start)
        a, b = statistics.median(times_np), statistics.median(times_torch)
        print(f"{vocab:6d} | {n:6d} | {a:12.3f} | {b:7.3f} | {a / b:13.1f}x | {t_np:7.4f} | {t_torch:7.4f}")
    print(f"\nthe logits of the fit, {args.rows} probe rows of {args.seq} tokens, no teacher cache:")
    print("vocab  | before s | now s | before / now | before peak MiB | now peak MiB")
    ctx = mp.get_context("spawn")
    for vocab in args.vocab:
        got = {}
        for variant in ("before", "now"):
            q = ctx.Queue()
            proc = ctx.Process(target=_gather, args=(variant, vocab, args.rows, args.seq, args.device, q))
            proc.start()
            got[variant] = q.get()
            proc.join()
        (a, ma), (b, mb) = got["before"], got["now"]
        print(f"{vocab:6d} | {a:8.2f} | {b:5.2f} | {a / b:11.1f}x | {ma:15.0f} | {mb:12.0f}")


if __name__ == "__main__":
    main()
