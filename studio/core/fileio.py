"""Atomic file writes: a failed or cancelled write leaves no partial file and never replaces the
user's file with a broken one (write a temporary file beside it, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yields a temporary path in the same folder; on success it replaces `path` in one rename,
    on any exception (including KeyboardInterrupt) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary keeps the real suffix: some writers (torch.export) insist on it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
