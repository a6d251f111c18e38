"""Atomic file writes, shared by every package that writes results (profiles, plans, run reports,
checkpoint markers): a reader sees the old file or the whole new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> Path:
    """Write `text` to a temporary file beside `path`, flush it to disk and rename it into place. A failed
    write leaves neither half a file nor a stray temporary one. `mode`: the file's permissions (mkstemp
    would leave it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
