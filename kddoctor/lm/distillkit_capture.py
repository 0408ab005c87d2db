"""DistillKit's offline teacher captures read as `topk:` arrays (`--teacher topk:DIR`, `topk:F.parquet`).

DistillKit's sampler (`distillkit/sample_logits_vllm.py`) writes a directory of `data_*.parquet` files
and the `compression_config.yaml` they were compressed with. Each parquet row holds a sequence's
`input_ids` and, for its positions 1..L-1 (vLLM's prompt log-probabilities: the first token has none), the
teacher's top-k log-probabilities at T 1 in one of three layouts (`distillkit/compression/compressor.py`,
`LogprobCompressor.decompress_to_sparse`):

- raw: `token_ids` and `top_values` (read with pyarrow alone);
- compressed (the default): `compressed_logprobs` and `bytepacked_indices`, decoded by DistillKit's own
  `LogprobCompressor` with the `logprob_compressor` config of the capture;
- legacy: `packed_indices`, `exact_values` and `coeffs`, decoded likewise with a legacy config.

Decoding the compressed layouts needs the `distillkit` package that wrote them (kddoctor does not copy its
codec); the position alignment is DistillKit's: the log-probabilities of row position j predict token j+1,
as a causal LM's logits at position j do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

CONFIG = "compression_config.yaml"
RAW = ("token_ids", "top_values")
COMPRESSED = ("compressed_logprobs", "bytepacked_indices")
LEGACY = ("packed_indices", "exact_values", "coeffs")


def is_distillkit(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".parquet"


def read(path: Path, spec: str) -> dict[str, np.ndarray]:
    """The capture as `offline.OfflineTeacher` arrays: input_ids, attention_mask, top_ids, top_logprobs
    ([N, L(, k)], log-probabilities -inf where a position has fewer than k) and vocab_size when known."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise UserError(f"--teacher {spec}: no .parquet capture there (DistillKit writes data_*.parquet)")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"--teacher {spec}: reading a DistillKit parquet capture needs pyarrow: pip install pyarrow"
        ) from None
    try:
        table = pq.read_table([str(f) for f in files]) if len(files) > 1 else pq.read_table(str(files[0]))
    except Exception as e:  # a damaged or foreign file
        why = f"{type(e).__name__}: {e}"
        raise UserError(f"--teacher {spec}: not a readable parquet capture ({why})") from None
    cols = set(table.column_names)
    if "input_ids" not in cols:
        raise UserError(f"--teacher {spec}: the capture has no input_ids column")
    config = _config(path, spec) if not set(RAW) <= cols else None
    decode = _decoder(cols, config, spec)
    ids = table.column("input_ids").to_pylist()
    data = {c: table.column(c).to_pylist() for c in cols if c != "input_ids"}
    rows = [decode({c: v[i] for c, v in data.items()}) for i in range(len(ids))]
    out = _stack(ids, rows)
    vocab = (config or {}).get("d") or (config or {}).get("vocab_size")
    if vocab:
        out["vocab_size"] = np.asarray(int(vocab))
    return out


def _config(path: Path, spec: str) -> dict:
    """The capture's compression config: `compression_config.yaml` in the capture directory (DistillKit's
    sampler writes it) or beside the parquet file."""
    where = (path if path.is_dir() else path.parent) / CONFIG
    if not where.is_file():
        raise UserError(
            f"--teacher {spec}: no {CONFIG} beside the compressed capture: put the logprob_compressor block "
            f"the capture was made with there (DistillKit's sampler writes it into its output directory)"
        )
    import yaml

    cfg = yaml.safe_load(where.read_text()) or {}
    cfg = cfg.get("teacher", cfg)  # a training config's teacher block works too
    return cfg.get("logprob_compressor") or cfg.get("legacy_logit_compression") or cfg


def _decoder(cols: set, config: dict | None, spec: str):
    """One row's (ids [L', k], log-probs [L', k]) from its columns, by layout."""
    if set(RAW) <= cols:
        return lambda row: (np.asarray(row["token_ids"]), np.asarray(row["top_values"], dtype=np.float32))
    layout = COMPRESSED if set(COMPRESSED) <= cols else LEGACY if set(LEGACY) <= cols else None
    if layout is None:
        raise UserError(
            f"--teacher {spec}: no top-k columns ({', '.join(RAW)}; or DistillKit's compressed "
            f"{', '.join(COMPRESSED)}); the columns are {', '.join(sorted(cols))}"
        )
    try:
        import torch
        from distillkit.compression import (
            DistributionQuantizationConfig,
            LegacyLogitCompressionConfig,
            LogprobCompressor,
        )
    except ImportError:
        raise UserError(
            f"--teacher {spec}: decoding DistillKit's compressed log-probabilities needs the distillkit "
            "package that wrote them (install it here), or a capture with raw token_ids/top_values columns"
        ) from None
    if layout == COMPRESSED:
        codec = LogprobCompressor(config=DistributionQuantizationConfig(**config))
    else:
        codec = LogprobCompressor(legacy_config=LegacyLogitCompressionConfig(**config))
    dtypes = {"exact_values": torch.float32, "coeffs": torch.float32}

    def decode(row: dict):
        t = {c: torch.tensor(row[c], dtype=dtypes.get(c, torch.uint8))[None] for c in layout}
        if layout == LEGACY:
            t["packed_indices"] = torch.tensor(row["packed_indices"], dtype=torch.int64)[None]
        top, logp = codec.decompress_to_sparse(t)
        return top[0].long().numpy(), logp[0].float().numpy()

    return decode


def _stack(ids: list[list[int]], rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Right-pad the rows to one width; a position past a row's log-probabilities holds -inf (uniform)."""
    width = max(len(r) for r in ids)
    k = max(top.shape[-1] for top, _ in rows if top.ndim == 2 and top.size)
    n = len(ids)
    out = {
        "input_ids": np.zeros((n, width), np.int64),
        "attention_mask": np.zeros((n, width), np.int64),
        "top_ids": np.zeros((n, width, k), np.int64),
        "top_logprobs": np.full((n, width, k), -np.inf, np.float32),
    }
    for i, (tokens, (top, logp)) in enumerate(zip(ids, rows, strict=True)):
        out["input_ids"][i, : len(tokens)] = tokens
        out["attention_mask"][i, : len(tokens)] = 1
        m = min(len(top), width)
        out["top_ids"][i, :m, : top.shape[-1]] = top[:m]
        out["top_logprobs"][i, :m, : logp.shape[-1]] = logp[:m]
    return out
