"""SPEC parsing, model construction and checkpoint loading.

Checkpoints load with `torch.load(weights_only=True)` unless the user trusts them; the wrappers
real training scripts write (timm's CheckpointSaver, torchdistill, ConvNeXt-style `main.py`,
KD wrappers that save `student.` keys) are unwrapped, never guessing between a model and its EMA.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import pickle
import zipfile
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from torch import nn

from ._imports import resolve_callable
from .errors import UserError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "student", "net", "module")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
CLASSIFIER_HINTS = ("head", "fc", "classifier", "score", "logits", "linear", "last_linear", "out")
# Plain classes real training scripts store beside the weights (timm / ConvNeXt save argparse args).
SAFE_GLOBALS = [argparse.Namespace]


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """'timm:resnet18?in_chans=1' -> ('timm', 'resnet18', {'in_chans': 1}); else ('callable', ref, {})."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("model SPEC is empty; use timm:ARCH, path/to/file.py:FUNC or package.module:FUNC")
    if spec.startswith("timm:"):
        body = spec[len("timm:") :]
        arch, _, query = body.partition("?")
        if not arch or not all(c.isalnum() or c in "_.-" for c in arch):
            raise UserError(f"model SPEC {spec!r}: {arch!r} is not a timm architecture name")
        kwargs = {}
        for key, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if not key.isidentifier():
                raise UserError(f"model SPEC {spec!r}: {key!r} is not a keyword argument name")
            try:
                kwargs[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                kwargs[key] = raw  # plain strings such as act_layer=gelu
        if query and not kwargs and "=" not in query:
            raise UserError(f"model SPEC {spec!r}: write keyword arguments as ?key=value&key=value")
        return "timm", arch, kwargs
    return "callable", spec, {}


def spec_num_classes(spec: str) -> int | None:
    """The class count a timm SPEC states (`timm:ARCH?num_classes=5`), if any."""
    kind, _, kwargs = parse_spec(spec)
    n = kwargs.get("num_classes") if kind == "timm" else None
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise UserError(f"model SPEC {spec!r}: num_classes must be a positive integer, got {n!r}")
    return n


def build_model(spec: str, num_classes: int | None) -> nn.Module:
    """Instantiate the model a SPEC names (weights random: pretrained=False)."""
    kind, ref, kwargs = parse_spec(spec)
    if kind == "timm":
        import timm

        if not timm.is_model(ref):
            near = timm.list_models(f"*{ref[:6]}*")[:5]
            hint = f"; similar: {', '.join(near)}" if near else ""
            raise UserError(f"model SPEC {spec!r}: timm has no architecture {ref!r}{hint}")
        stated = spec_num_classes(spec)
        if num_classes is not None and stated is not None and stated != num_classes:
            raise UserError(f"model SPEC {spec!r} says num_classes={stated} but the run has {num_classes}")
        if num_classes is not None:
            kwargs = {"num_classes": num_classes, **kwargs}
        try:
            return timm.create_model(ref, pretrained=False, **kwargs)
        except TypeError as e:
            raise UserError(f"model SPEC {spec!r}: bad keyword argument: {e}") from e
    fn = resolve_callable(ref, "model SPEC")
    try:
        params = inspect.signature(fn).parameters
        takes_nc = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_nc = False
    try:
        model = fn(num_classes=num_classes) if takes_nc and num_classes is not None else fn()
    except Exception as e:
        raise UserError(f"model SPEC {spec!r}: calling it failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"model SPEC {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def spec_code(spec: str, num_classes: int | None, var: str = "student") -> str | None:
    """Python that builds the model a SPEC names, as its user does (timm, their module, their file);
    None when the SPEC is no importable factory (then no code is better than wrong code)."""
    try:
        kind, ref, kwargs = parse_spec(spec)
        if kind == "timm":
            if num_classes is not None:
                kwargs = {**kwargs, "num_classes": num_classes}
            args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
            return f"import timm\n{var} = timm.create_model({ref!r}, pretrained=False{args})"
        fn = resolve_callable(ref, "model SPEC")
    except UserError:
        return None
    params = inspect.signature(fn).parameters
    takes_nc = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    where, name = ref.rsplit(":", 1)
    call = f"{var} = {name}({f'num_classes={num_classes}' if takes_nc and num_classes else ''})"
    if not where.endswith(".py"):
        return f"from {where} import {name}\n{call}"
    path = str(Path(where).resolve())
    return (
        "import importlib.util\n"
        f"_spec = importlib.util.spec_from_file_location('user_models', {path!r})\n"
        "_mod = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_mod)\n"
        f"{name} = _mod.{name}\n{call}"
    )


def is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive (a zip with code/ and constants.pkl), not a torch.save checkpoint."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _findable(name: str) -> bool:
    """Whether the module of a pickled global (`pkg.mod.Class`) can be found, without importing it."""
    top = name.split(".")[0]
    if top == "__main__" or "." not in name:
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _unimportable(path: Path, names: list[str], trust: bool, detail: str = "") -> UserError:
    return UserError(
        f"checkpoint {path} pickles a whole model whose class cannot be imported here "
        f"({', '.join(names[:3])}{'; ' + detail if detail else ''}); make the class importable "
        f"(e.g. put its module on PYTHONPATH) and {'keep' if trust else 'pass'} --trust-checkpoint, "
        "or save model.state_dict() instead"
    )


def _read_file(path: Path, trust: bool) -> object:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(
                f"checkpoint {path} is not a valid .safetensors file ({e}); "
                "re-export it or check the download"
            ) from e
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = None if trust else pickle_globals(path)
        if not names:
            raise UserError(
                f"checkpoint {path} is corrupt or truncated (unreadable pickle: "
                f"{_last_line(e)}); check the file or save it again"
            ) from e
        missing = [n for n in names if not _findable(n)]
        if missing:
            raise _unimportable(path, missing, trust) from e
        raise UserError(
            f"checkpoint {path} needs to unpickle code ({', '.join(names[:3])}), refused under "
            "weights_only; pass --trust-checkpoint only if you trust where it came from"
        ) from e
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        AttributeError,
        ModuleNotFoundError,
        ImportError,
    ) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        names = pickle_globals(path) if isinstance(e, AttributeError | ImportError) else None
        if names:  # a pickled class that is gone (renamed, moved, defined in a script's __main__)
            raise _unimportable(path, names, trust, msg[:120]) from e
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({msg[:200]}); check the file or save it again"
        ) from e


def _last_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next(
        (ln for ln in lines if "operand" in ln.lower() or "global" in ln.lower()),
        lines[0] if lines else type(e).__name__,
    )[:160]


def pickle_globals(path: Path) -> list[str] | None:
    """Names of the callables a pickle would import, read without executing it; None if unparsable."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                data = zf.read(member)
        else:
            data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:
        return None
    safe = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    unsafe = [
        n for n in dict.fromkeys(names) if n not in safe and not n.startswith(("torch.", "collections."))
    ]
    return unsafe


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_checkpoint(obj: object, *, role: str, ema: bool, path: str = "checkpoint") -> dict:
    """Find the state dict inside what a training script saved."""
    if not isinstance(obj, dict):
        if isinstance(obj, nn.Module):  # a whole pickled model (only reachable with --trust-checkpoint)
            return obj.state_dict()
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict of them")
    if ema:
        for key in EMA_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
            if isinstance(obj.get(key), dict):
                return unwrap_checkpoint(obj[key], role=role, ema=False, path=path)
        raise UserError(f"{path} has no EMA weights (looked for {', '.join(EMA_KEYS)}); drop --{role}-ema")
    if _is_state_dict(obj):
        return dict(obj)
    keys = ((role,) if role in ("student", "teacher") else ()) + WRAPPER_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, dict):
            return unwrap_checkpoint(inner, role=role, ema=False, path=path)
        if isinstance(inner, nn.Module):
            return inner.state_dict()
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:  # a state dict with a few non-tensor extras mixed in (e.g. metadata)
        return tensors
    has_ema = [k for k in EMA_KEYS if k in obj]
    hint = f"; it holds EMA weights under {has_ema[0]!r}: pass --{role}-ema" if has_ema else ""
    raise UserError(
        f"{path} holds no state dict (top-level keys: {', '.join(map(str, list(obj)[:8]))}){hint}"
    )


def normalize_keys(sd: dict) -> dict:
    """Strip DDP `module.` and torch.compile `_orig_mod.` prefixes."""
    out = {}
    for k, v in sd.items():
        k = k.replace("_orig_mod.", "")
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def load_state_dict(
    path: str | Path, *, role: str = "model", ema: bool = False, trust: bool = False
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat, prefix-free state dict."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--{role}-ckpt {p} is a directory; point at the checkpoint file")
    if not p.is_file():
        raise UserError(f"--{role}-ckpt {p} not found; check the path")
    if is_torchscript(p):
        raise UserError(
            f"--{role}-ckpt {p} is a TorchScript archive (torch.jit.save), code and weights in one; "
            f"drop --{role}-ckpt and pass --{role} load.py:load, "
            f"where load() returns torch.jit.load({str(p)!r})"
        )
    obj = _read_file(p, trust)
    return normalize_keys(unwrap_checkpoint(obj, role=role, ema=ema, path=str(p)))


def infer_num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    """Number of classes from the classifier weight: the last 2-D weight, preferring head-like names."""
    mats = [(k, v) for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if not mats:
        return None
    named = [(k, v) for k, v in mats if any(h in k.split(".")[-2:][0] for h in CLASSIFIER_HINTS)]
    return int((named or mats)[-1][1].shape[0])


def _select_prefix(sd: dict, model_keys: set[str], role: str) -> dict:
    """KD wrappers save `student.`/`teacher.` keys; pick the sub-dict that fits the model best."""
    best, best_hits = sd, len(model_keys & sd.keys())
    for prefix in (f"{role}.", "model.", "backbone.", "student.", "teacher."):
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        hits = len(model_keys & sub.keys())
        if hits > best_hits:
            best, best_hits = sub, hits
    return best


def _fmt(items: list[str], n: int = 3) -> str:
    more = f", ... +{len(items) - n}" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def fit_state_dict(model: nn.Module, sd: dict, *, role: str, source: str) -> None:
    """Load `sd` into `model`, or raise one line listing missing/unexpected/mis-shaped keys."""
    target = model.state_dict()
    sd = _select_prefix(sd, set(target), role)
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    shapes = [
        f"{k} {list(sd[k].shape)} vs model {list(target[k].shape)}"
        for k in target
        if k in sd and sd[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_fmt(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_fmt(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_fmt(shapes, 2)})")
        hint = _mismatch_hint(missing, unexpected, shapes, role)
        raise UserError(f"--{role}-ckpt {source} does not fit the --{role} model: {'; '.join(parts)}{hint}")
    model.load_state_dict(sd, strict=False)


def _mismatch_hint(missing: list[str], unexpected: list[str], shapes: list[str], role: str) -> str:
    if unexpected and any(k.split(".")[0] in ("ema", "model_ema") for k in unexpected):
        return f"; the file looks like EMA weights: pass --{role}-ema"
    if missing and unexpected:
        heads = {k.split(".")[0] for k in unexpected}
        if len(heads) == 1:
            return f"; its keys carry the prefix '{heads.pop()}.': save the inner model's state_dict"
        return "; is --" + role + " the architecture this checkpoint was trained with?"
    if shapes:
        return (
            "; check the model's keyword arguments (an image model's --num-classes, in_chans, img_size; a "
            "causal LM's vocabulary, width and depth)"
        )
    return ""


def load_model(
    spec: str,
    ckpt: str | None,
    *,
    role: str,
    num_classes: int | None,
    ema: bool = False,
    trust: bool = False,
    state_dict: dict | None = None,
) -> nn.Module:
    """Build the SPEC's model and load its checkpoint (if any)."""
    model = build_model(spec, num_classes)
    if ckpt is not None:
        sd = state_dict if state_dict is not None else load_state_dict(ckpt, role=role, ema=ema, trust=trust)
        fit_state_dict(model, sd, role=role, source=str(ckpt))
    return model.eval()
