"""Causal LMs from SPECs: `hf:DIR` (transformers, local files only) or file/module factories; and what
their tokenizers say (vocabulary size, special tokens, a content hash) when a directory carries one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from ..errors import UserError

LM_EXTRA = "pip install 'kddoctor[lm]'"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _transformers(what: str):
    try:
        import transformers
    except ImportError:
        raise UserError(f"{what} needs transformers: {LM_EXTRA}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # 5.x draws a weight-loading bar on stderr
    return transformers


def hf_dir(spec: str, role: str) -> Path:
    """The directory of an `hf:DIR` SPEC, refused with one line unless it holds a model config."""
    path = Path(spec[3:]).expanduser()
    if not spec[3:]:
        raise UserError(f"--{role} hf: needs a directory: hf:path/to/model (a save_pretrained output)")
    if not path.is_dir():
        raise UserError(
            f"--{role} {spec}: no such directory (hf: loads a local save_pretrained directory; "
            "kddoctor never downloads from a hub)"
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"--{role} {spec}: {path} has no config.json; point hf: at the directory that "
            "model.save_pretrained(DIR) wrote"
        )
    return path


DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_hf(
    spec: str, role: str, *, trust: bool = False, device_map: str | None = None, dtype: str | None = None
) -> nn.Module:
    """AutoModelForCausalLM from a local directory (never a hub download), in eval mode. `device_map`
    ('auto', 'balanced', a device...) spreads a model too large for one device over several through
    accelerate, `dtype` loads it in another precision (both: Hugging Face's own arguments)."""
    path = hf_dir(spec, role)
    tf = _transformers(f"--{role} {spec}")
    extra: dict = {}
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise UserError(f"--{role}-device-map needs accelerate: pip install accelerate") from None
        extra["device_map"] = device_map
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"--{role}-dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        import torch

        extra["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust, **extra
        )
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        hint = " (custom model code needs --trust-checkpoint)" if "trust_remote_code" in str(e) else ""
        raise UserError(f"--{role} {spec}: transformers could not load it: {first}{hint}") from None
    return model.eval()


def load_tokenizer(spec: str):
    """The tokenizer an hf: directory carries (None when the SPEC is no hf: directory or it has none)."""
    if not spec.startswith("hf:"):
        return None
    path = Path(spec[3:]).expanduser()
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    tf = _transformers(f"the tokenizer in {path}")
    try:
        return tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        return None


def tokenizer_info(spec_or_tokenizer) -> dict | None:
    """Vocabulary size, special token ids and a content hash of a tokenizer (or of the one an hf:
    directory carries; None when there is none)."""
    tok = load_tokenizer(spec_or_tokenizer) if isinstance(spec_or_tokenizer, str) else spec_or_tokenizer
    if tok is None or not hasattr(tok, "get_vocab"):
        return None
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    specials = {name: getattr(tok, f"{name}_token_id", None) for name in ("pad", "eos", "bos", "unk")}
    template = getattr(tok, "chat_template", None)
    digest = hashlib.sha256(json.dumps([vocab, specials], ensure_ascii=False).encode()).hexdigest()
    return {
        "size": len(tok),
        "special_ids": specials,
        "hash": digest[:16],
        "chat_template_hash": hashlib.sha256(str(template).encode()).hexdigest()[:16] if template else None,
    }


def shared_tokenizer_size(tokenizers: dict) -> int | None:
    """The size of the one tokenizer both models carry (the same ids and special tokens); None when
    either has none or they differ."""
    t, s = tokenizers.get("teacher"), tokenizers.get("student")
    return t["size"] if t and s and t["hash"] == s["hash"] else None


def pads_past(shared: int | None, vocab: int) -> bool:
    """Every row past the first `vocab` is padding: the one tokenizer both models carry (`shared`, its
    size) ends before them, so no text reaches them."""
    return shared is not None and shared <= vocab


def padding_reason(tokenizers: dict, vocab: int) -> str:
    """Why rows past the first `vocab` may be compared away: the one tokenizer both carry ends before
    them, or the user said so."""
    shared = shared_tokenizer_size(tokenizers)
    if pads_past(shared, vocab):
        return f"both carry one tokenizer of {shared:,} ids: the rows past it are padding"
    return "--allow-vocab-truncation"


def teacher_load(teacher) -> dict:
    """How the teacher was loaded, as results.json `run` states it: the dtype of its weights (what
    --teacher-dtype chose) and, when accelerate spread it (--teacher-device-map), the devices it spans."""
    first = next(iter(teacher.parameters()), None) if hasattr(teacher, "parameters") else None
    out = {"teacher_dtype": str(first.dtype).removeprefix("torch.") if first is not None else None}
    spread = getattr(teacher, "hf_device_map", None)
    if spread:
        out["teacher_devices"] = sorted({str(d) for d in spread.values()})
    return out


def vocabulary_text(tok) -> tuple[list[str], set[int]] | None:
    """Each token id's decoded text and the special ids of a transformers tokenizer (the text-parity
    check's token classes); None when it cannot decode single ids."""
    try:
        size = len(tok)
        strings = tok.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    except Exception:  # a tokenizer that cannot decode every id alone
        return None
    return list(strings), set(getattr(tok, "all_special_ids", []) or [])
