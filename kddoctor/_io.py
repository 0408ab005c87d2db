"""The one way kddoctor writes files: to a temporary name in the target directory, then rename.

A reader (a browser, CI, a concurrent build of the same cached model) never sees half a file, and a
run that fails while writing leaves the previous outputs intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], None]
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(directory: Path, files: dict[str, bytes | Writer]) -> None:
    """Write every file (bytes, or a function writing to a binary file object) next to its final name,
    then rename them all; an OSError removes the temporaries and leaves the old files in place."""
    directory = Path(directory)
    temps: list[tuple[str, Path]] = []
    try:
        for name, content in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).name}.", dir=directory)
            temps.append((tmp, directory / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(content) if isinstance(content, bytes) else content(fh)
            os.chmod(tmp, 0o644 & ~_UMASK)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, final in temps:
        os.replace(tmp, final)
