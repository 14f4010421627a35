"""Writing into the output directory without losing data and without following links.

Every file paqbench writes there goes through :func:`write_text_atomic` (temp file in the
same directory, fsync, ``os.replace``): a crash leaves the old file or the new one, never
half of one, and a symbolic link already sitting at the path is replaced, never written
through (its target is untouched). The one append-only file, ``results.jsonl``, is opened
with ``O_NOFOLLOW`` and written with :func:`write_all`, which checks every ``os.write``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path

#: Longest default output directory name: well under the usual 255-byte file-name limit.
MAX_DIR_NAME = 100


class OutputError(OSError):
    """The output directory or a file in it cannot be written; ``str()`` is one line for the user."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: ``os.write`` may write less than asked (a full disk does)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` by temp file + ``os.replace`` in its directory.

    Never writes through an existing symbolic link at ``path``: the link itself is
    replaced. Raises :class:`OutputError` with one readable line.
    """
    path = Path(path)
    fd, tmp = -1, ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically, never through a symlink (see module doc).

    Reporters write every report file with this.
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def safe_dir_name(name: str) -> str:
    """``name`` if it is short enough for a directory name, else its start plus a short hash.

    A 300-character suite name must not make the default ``reports/<name>`` uncreatable.
    """
    if len(name.encode("utf-8")) <= MAX_DIR_NAME:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return name[: MAX_DIR_NAME - 11] + "-" + digest


def output_dir_problem(directory: Path) -> str | None:
    """What stops ``directory`` from being created and written, found without creating anything
    (``paqbench validate``): a parent that is a file, a name too long, no write permission."""
    too_long = [part for part in directory.parts if len(part.encode("utf-8")) > 255]
    if too_long:
        return f"cannot create output directory {directory}: a name in it is longer than 255 bytes"
    for parent in [directory, *directory.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is a file" if parent == directory else f"is below {parent}, which is a file"
                return f"output directory {directory} {what}"
            if not os.access(parent, os.W_OK):
                return f"output directory {directory} is not writable: no write permission on {parent}"
            return None
    return None


def check_output_dir(directory: Path) -> None:
    """Create ``directory`` and prove it writable now, before anything runs.

    Raises :class:`OutputError` naming the problem in one line: a parent that is a file,
    a directory that cannot be created, or one where a file cannot be written (a real
    write probe: permissions say nothing on a read-only file system, or to root).
    """
    problem = output_dir_problem(directory)
    if problem:
        raise OutputError(errno.ENOTDIR, problem)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create output directory {directory}: {exc.strerror or exc}") from None
    probe = directory / f".paqbench-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            write_all(fd, b"probe\n")
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(exc.errno, f"output directory {directory} is not writable: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
