"""Atomic file writes: a crash never leaves half a file where a good one was."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@functools.cache
def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    """The permissions open() gives a new file under this process's umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """(fd, name) of a new hidden temp file in `path`'s folder, to be renamed over `path`, with the permissions a plain
    open() would give it: mkstemp makes it 0600, which would leave every result unreadable to the user's group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, _file_mode())
    return fd, tmp


def temp_dir_beside(path: Path) -> Path:
    """A new hidden folder in `path`'s folder, to be renamed to `path`, with the permissions mkdir() would give it
    (mkdtemp makes it 0700). `share_files` then gives the files written into it open()'s permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Write a whole output folder or none of it: yields a hidden folder beside `out`; when the block ends without
    error its files get open()'s permissions and it replaces `out` (an existing one is removed first), otherwise it
    is deleted and `out` is left as it was."""
    out = Path(out)
    tmp = temp_dir_beside(out)
    try:
        yield tmp
        share_files(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def share_files(folder: Path) -> None:
    """Give every file below `folder` the permissions open() would (some writers, safetensors' among them, make 0600)."""
    for f in Path(folder).rglob("*"):
        if f.is_file():
            os.chmod(f, _file_mode())


# Write failures that come from the machine, not from sslkit: the user can act on them, so they are one line naming
# the file and what to do (exit code 2), never "internal error".
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                      errno.EPERM: "operation not permitted"}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_space(path: Path) -> str:
    """ "12.3 GB free on /mnt/runs" for the filesystem holding `path` (its nearest existing folder)."""
    place = Path(path).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return f"{_size(shutil.disk_usage(place).free)} free on {place}"
    except OSError:
        return f"free space on {place} unknown"


def environment_error(exc: BaseException, path: Path | None = None, todo: str | None = None) -> str | None:
    """The one-line message for an OSError the user can fix (full disk, quota, read-only filesystem, permissions),
    or None for any other error. `todo` replaces the default advice (run the command again)."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = path if path is not None else exc.filename
    what = ENVIRONMENT_ERRNOS[exc.errno]
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write {where}: {what} ({free_space(Path(where or '.'))}) — "
                f"{todo or 'free some space (or write elsewhere) and run the command again'}")
    return f"cannot write {where}: {what} — {todo or 'write to a folder you can write in, or fix its permissions'}"


@contextlib.contextmanager
def atomic_writer(path: Path, todo: str | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` only when the block finishes without error. A full disk,
    a read-only filesystem or a permission error is a UserError naming `path` (and `todo`, what to do then); the
    file that was at `path` is left as it was."""
    try:
        fd, tmp = temp_beside(path)
    except OSError as exc:
        _reraise(exc, path, todo)
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _reraise(exc, path, todo)
        raise


def _reraise(exc: BaseException, path: Path, todo: str | None) -> None:
    from sslkit.core.errors import UserError

    message = environment_error(exc, path, todo)
    if message is not None:
        raise UserError(message) from exc


def atomic_write_bytes(path: Path, data: bytes, todo: str | None = None) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    with atomic_writer(path, todo) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a `path` where nothing can be written: its nearest existing folder (missing ones are
    created on write) must take a new file. A probe, not os.access, which says yes to root and to /proc alike."""
    from sslkit.core.errors import UserError

    place = Path(path).absolute().parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UserError(f"{what} {path}: {place} is a file, not a folder — choose another path")
    try:
        tempfile.TemporaryFile(dir=place).close()
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write in {place} ({exc.strerror}) — choose a writable folder") from None


def check_file_out(out: Path, overwrite: bool, example: str) -> Path:
    """An `--out` file: not a folder, not an existing file without --overwrite, and in a writable place."""
    from sslkit.core.errors import UserError

    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder — give a file path such as {out / example}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists — pass --overwrite to replace it")
    check_writable(out, "--out")
    return out


def check_dir_out(out: Path, overwrite: bool, what: str = "--out") -> Path:
    """A folder output: not a file (--overwrite would swap the user's file for a folder), not a non-empty folder
    without --overwrite, and in a writable place."""
    from sslkit.core.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file, but this output is a folder — give a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists — pass --overwrite to replace it, or choose another {what}")
    check_writable(out, what)
    return out
