"""Resolve `path/to/file.py:FUNC` and `package.module:FUNC` references."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def split_ref(ref: str, what: str) -> tuple[str, str]:
    """'a/b.py:fn' -> ('a/b.py', 'fn'), with a clear error for anything else."""
    if not isinstance(ref, str) or ":" not in ref:
        raise UserError(f"{what} {ref!r} is not of the form path/to/file.py:FUNC or package.module:FUNC")
    where, _, name = ref.rpartition(":")
    if not where or not name.isidentifier():
        raise UserError(f"{what} {ref!r} is not of the form path/to/file.py:FUNC or package.module:FUNC")
    return where, name


def resolve_callable(ref: str, what: str) -> Callable:
    """Import the module or file a reference names and return its callable."""
    where, name = split_ref(ref, what)
    if where.endswith(".py"):
        path = Path(where)
        if path.is_dir():
            raise UserError(f"{what} {ref!r}: {where} is a directory; point at a .py file")
        if not path.is_file():
            raise UserError(f"{what} {ref!r}: file {where} not found")
        mod_name = f"_kddoctor_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"{what} {ref!r}: cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's file failed at import time
            sys.modules.pop(mod_name, None)
            raise UserError(f"{what} {ref!r}: importing {where} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.pop(0)
    else:
        if not all(part.isidentifier() for part in where.split(".")):
            raise UserError(f"{what} {ref!r}: {where!r} is neither a .py file nor a module name")
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise UserError(
                f"{what} {ref!r}: module {where!r} not found ({e}); "
                "check the name or use path/to/file.py:FUNC"
            ) from e
        except Exception as e:
            raise UserError(f"{what} {ref!r}: importing {where} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise UserError(f"{what} {ref!r}: {where} has no attribute {name!r}")
    if not callable(fn):
        raise UserError(f"{what} {ref!r}: {name!r} is not callable")
    return fn
