"""Text every machine has, for the LM zoo: the standard library's source (code) and its English
documentation (prose: the pydoc topics that ship with Python and the modules' docstrings).

Each corpus is a list of named sources; a stable hash of the name puts a source in the teacher's text
(which the students distill on too, as a student often learns from its teacher's data) or in the
held-out val text, so the splits never depend on file order; the tokenizer learns other text.
Documents are cut from a split's sources at seeded random line boundaries (`documents`); `TRANSFORMS`
are the ways a train pipeline may prepare text unlike its eval pipeline (planted on the train side).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
import unicodedata
from pathlib import Path

import torch

STDLIB = Path(sysconfig.get_paths()["stdlib"])
OTHER = {"code": "prose", "prose": "code"}
TOKENIZER_PACKAGES = ("email", "json", "http", "logging", "unittest", "xml", "concurrent", "importlib")


def _bucket(name: str, buckets: int = 20) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % buckets


@functools.cache
def sources(corpus: str) -> tuple[tuple[str, str], ...]:
    """(name, text) of every source of a corpus: 'code' (top-level stdlib modules) or 'prose'."""
    modules = sorted(STDLIB.glob("*.py"))
    if corpus == "code":
        return tuple((p.stem, p.read_text(errors="replace")) for p in modules)
    if corpus == "prose":
        from pydoc_data.topics import topics

        out = [(f"topic:{k}", v) for k, v in sorted(topics.items())]
        out += [(f"doc:{p.relative_to(STDLIB)}", d) for p in _documented() if (d := _docstrings(p))]
        return tuple(out)
    raise KeyError(f"no corpus {corpus!r}: code or prose")


def _documented() -> list[Path]:
    """Every stdlib module but the tests, site-packages and the tokenizer's packages."""
    skip = {"test", "tests", "site-packages", "idlelib", "lib2to3", *TOKENIZER_PACKAGES}
    return [p for p in sorted(STDLIB.rglob("*.py")) if not skip & set(p.relative_to(STDLIB).parts[:-1])]


def _docstrings(path: Path) -> str:
    """A module's docstrings of 120 characters or more, one paragraph block each."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except SyntaxError:
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = [
        d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n)) and len(d) >= 200
    ]
    return "\n\n".join(docs)


def split_text(corpus: str, split: str) -> list[str]:
    """A split's sources: 'teacher' (80 %; the students distill on it too) or 'val' (20 %, held out)."""
    held_out = split == "val"
    if split not in ("teacher", "distill", "val"):
        raise KeyError(f"no split {split!r}: teacher, distill or val")
    return [text for name, text in sources(corpus) if (_bucket(name) < 4) == held_out]


@functools.cache
def tokenizer_text() -> tuple[str, ...]:
    """Other text than any model's: the code and docstrings of a few stdlib packages."""
    out = []
    for pkg in TOKENIZER_PACKAGES:
        for p in sorted((STDLIB / pkg).rglob("*.py")):
            out.append(p.read_text(errors="replace"))
    return tuple(out)


def documents(texts: list[str], seed: int, count: int, chars: tuple[int, int] = (120, 600)) -> list[str]:
    """`count` documents cut at random line boundaries from the texts (seeded; lengths in `chars`)."""
    gen = torch.Generator().manual_seed(seed)
    lines = [t.splitlines(keepends=True) for t in texts if t.strip()]
    out = []
    while len(out) < count:
        src = lines[int(torch.randint(len(lines), (1,), generator=gen))]
        start = int(torch.randint(len(src), (1,), generator=gen))
        want = int(torch.randint(chars[0], chars[1] + 1, (1,), generator=gen))
        doc, i = "", start
        while i < len(src) and len(doc) < want:
            doc, i = doc + src[i], i + 1
        if len(doc.strip()) >= chars[0] // 2:
            out.append(doc)
    return out


def _strip_indent(text: str) -> str:
    return "".join(line.lstrip(" \t") for line in text.splitlines(keepends=True))


def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


TRANSFORMS = {
    "none": lambda t: t,
    "lower": str.lower,  # case normalization
    "strip_indent": _strip_indent,  # whitespace/indentation stripping
    "collapse_ws": lambda t: re.sub(r"\s+", " ", t).strip(),  # every run of whitespace to one space
    "ascii_fold": _ascii_fold,  # Unicode normalization to ASCII
}


def chosen(count: int, share: float, seed: int) -> list[bool]:
    """A seeded choice of `share` of `count` documents (all of them at share 1)."""
    if share >= 1.0:
        return [True] * count
    gen = torch.Generator().manual_seed(seed + 13)
    return (torch.rand(count, generator=gen) < share).tolist()
