"""Atomic file writes: a failed or cancelled write leaves no partial file and never replaces the
user's file with a broken one (write a temporary file beside it, then rename). Every file the
studio writes goes through `atomic_path`.

A process killed mid-write (SIGKILL, power loss) cannot remove its temporary, so each write first
removes the studio's own stale temporaries in its folder: regular files with a name only the
studio makes (`.{stem}.{8 random}.{pid}.partial{suffix}`; a folder so named when it holds only
files), idle 5 minutes with their writer process gone, or idle an hour. Nothing else is ever
deleted."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import StudioError

# `.{stem}.{mkstemp's 8 characters}.{writer pid}.partial{suffix}`; without the pid: older versions
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}(?:\.(?P<pid>\d+))?\.partial(?:\.[^.]+)?$")
# the folder of atomic_path(companions=...), holding files whose names start with its stem
TEMP_FOLDER = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.(?P<pid>\d+)\.partial$")
STALE_AFTER = 3600  # s since the last write: no studio write pauses this long
# s: a temporary whose writer pid is gone on this machine. Not at once: the folder may be shared
# with another machine, where that pid means something else.
ORPHAN_AFTER = 300


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process on Windows; age alone decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or no pid we can judge: assume alive
    return True


def _stale(match: re.Match, idle: float) -> bool:
    pid = match.group("pid")
    orphan = pid is not None and not _pid_alive(int(pid))
    return idle > (ORPHAN_AFTER if orphan else STALE_AFTER)


def is_stale_temporary(entry: os.DirEntry | Path) -> bool:
    """A regular file named like the studio's temporaries, idle for ORPHAN_AFTER when its writer
    process is gone, else for STALE_AFTER (a reused pid, a file from an older version)."""
    match = TEMP_NAME.match(entry.name)
    if not match:
        return False
    try:
        st = entry.stat(follow_symlinks=False) if isinstance(entry, os.DirEntry) else os.lstat(entry)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # never a folder or a symlink
    return _stale(match, time.time() - st.st_mtime)


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Remove the studio's own stale temporaries in `folder`; returns their names. Best effort:
    a folder that cannot be listed, or a file that vanished meanwhile, is no error."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if is_stale_temporary(entry) or _is_stale_temporary_folder(entry):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        _remove_files_and_folder(Path(entry.path))
                    else:
                        os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _is_stale_temporary_folder(entry: os.DirEntry) -> bool:
    """A temporary folder of atomic_path(companions=...): named and idle like a stale temporary
    file, holding only regular files named after it (else it is not ours, and is left alone)."""
    match = TEMP_FOLDER.match(entry.name)
    if not match or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        inside = list(os.scandir(entry.path))
        if not all(e.is_file(follow_symlinks=False) and e.name.startswith(match["stem"]) for e in inside):
            return False
        newest = max([entry.stat(follow_symlinks=False).st_mtime, *(e.stat().st_mtime for e in inside)])
    except OSError:
        return False
    return _stale(match, time.time() - newest)


def _remove_files_and_folder(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
    folder.rmdir()  # fails, keeping it, if anything else is in it


@contextlib.contextmanager
def atomic_path(path: Path, companions: Sequence[str] = ()):
    """Yields a temporary path in the same folder; on success it replaces `path` in one rename,
    on any exception (including KeyboardInterrupt) it is removed. An OSError (disk full, no
    permission, `path` is a folder) becomes a one-line StudioError.

    `companions`: names of files that `path` refers to by name (an ONNX model's external-data
    sidecar). The temporary is then `path.name` inside a temporary folder, the writer puts the
    companions beside it, and on success they are moved into place before `path`."""
    path = Path(path)
    # the temporary keeps the real suffix, for writers and readers that go by it; a long stem is
    # cut so that the temporary's name stays within the 255-byte limit (50 characters <= 200 bytes)
    prefix, suffix = f".{path.stem[:50]}.", f".{os.getpid()}.partial"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        remove_stale_temporaries(path.parent)
        if companions:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent)) / path.name
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix + path.suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        yield tmp
        for name in companions:
            os.replace(tmp.parent / name, path.parent / name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        if companions:
            tmp.parent.rmdir()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            if companions:
                _remove_files_and_folder(tmp.parent)
            else:
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> StudioError:
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return StudioError(f"cannot write {path}: {reason}; nothing was changed")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
