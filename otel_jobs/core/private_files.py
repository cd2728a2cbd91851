"""Files of the multiprocess directory, which other users may be able to write to: read and
written only in ways a planted file cannot abuse (see :mod:`otel_jobs.core.multiprocess`).

* :func:`read_private`: a regular file of this user only, opened with ``O_NOFOLLOW`` (a symlink
  is refused) and ``O_NONBLOCK`` (a FIFO cannot hang the reader), at most :data:`MAX_FILE_BYTES`;
* :func:`write_private`: a new file (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600) renamed over the
  target, so a symlink planted at any name is never followed;
* :func:`private_directory`: the default directory (mode 0700) with an owner lock its owner and
  forked children hold for their whole life, so that directories of owners that ended without
  cleaning up are recognised and removed (:func:`remove_stale_private_directories`);
* :func:`pid_named`: the pid a file's name gives, in ASCII digits only;
* :func:`pid_alive`: whether the process that wrote a snapshot still runs.

Never follows a symlink or opens anything but a regular file.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import stat
import tempfile
import threading

from . import errors

#: The largest file read from the directory; a bigger one is skipped, not read at every
#: scrape. A pool child's snapshot with 1,000 task names that each succeeded, failed and timed
#: out is about 12 MB (30 MB with 200-character names).
MAX_FILE_BYTES = 64 * 1024 * 1024

_PRIVATE_PREFIX = "otel-jobs-"
_LOCK_NAME = "owner.lock"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFileError(OSError):
    """A file of the shared directory that otel-jobs refuses to read or write."""


def _open_private(path: str) -> tuple[int, os.stat_result]:
    """An fd for reading ``path`` and its status, or :class:`UnsafeFileError` (fd closed)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink (O_NOFOLLOW)
            raise UnsafeFileError(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafeFileError(
                f"{path} is owned by uid {st.st_uid}, not by this process's user ({os.geteuid()})"
            )
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def read_private(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of ``path`` if it is a regular file of this user, at most ``limit`` bytes.

    Raises :class:`UnsafeFileError` otherwise (a symlink, a FIFO, a device, another user's
    file, a file too large), ``FileNotFoundError`` if there is none.
    """
    fd, st = _open_private(path)
    try:
        if st.st_size > limit:
            raise UnsafeFileError(f"{path} has {st.st_size} bytes, more than {limit}")
        chunks = []
        size = 0
        while size <= limit:  # the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFileError(f"{path} has more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def create_private(path: str) -> None:
    """Create ``path`` as an empty file of mode 0600; ``FileExistsError`` if anything is there
    (a symlink planted there is not followed)."""
    os.close(os.open(path, _CREATE_FLAGS, 0o600))


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, in a new file of mode 0600.

    The new file is created under a random name with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (nothing
    planted there is opened or followed) and renamed over ``path`` (a symlink at ``path`` is
    replaced, not followed).
    """
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _lock_is_free(path: str) -> bool:
    """Whether nobody holds the owner lock at ``path`` (its owner and children are gone)."""
    try:
        fd, _st = _open_private(path)
    except OSError:
        return False  # none yet (a directory being made), or not ours: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the lock taken
    return True


def remove_stale_private_directories(parent: str | None = None) -> int:
    """Remove the private directories (``otel-jobs-*``) left in ``parent`` by dead owners.

    A directory is removed only if it is this user's, is not a symlink, and holds an owner
    lock that nobody holds any more. Returns how many were removed.
    """
    parent = parent or tempfile.gettempdir()
    removed = 0
    uid = os.geteuid()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(_PRIVATE_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if _lock_is_free(os.path.join(entry.path, _LOCK_NAME)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


_held_locks: dict[str, int] = {}  # private directory -> fd of its owner lock
_held_lock = threading.Lock()


def private_directory() -> str:
    """A new private directory (mode 0700) for this owner, after removing stale ones.

    The owner lock inside is held through an fd that forked children inherit, so the
    directory stays in use until the owner and all its children have ended.
    """
    with _held_lock:
        for directory, fd in list(_held_locks.items()):
            if not os.path.isdir(directory):  # removed by its owner's stop(): let go
                os.close(fd)
                del _held_locks[directory]
    with errors.guard("multiprocess.cleanup"):
        remove_stale_private_directories()
    directory = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX)
    # Locked before it gets its name: the lock is never seen free while its owner lives.
    tmp = os.path.join(directory, f".{_LOCK_NAME}.tmp")
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, os.path.join(directory, _LOCK_NAME))
    except BaseException:
        os.close(fd)
        raise
    with _held_lock:
        _held_locks[directory] = fd
    return directory


def pid_named(text: str) -> int | None:
    """The pid written as ``text`` in ASCII digits (a file name's part), else None.

    Not ``str.isdigit()`` alone: it holds for ``"²"``, which ``int()`` refuses, so that a file
    named ``².json``, which any user who can write the directory can create, failed every merge.
    """
    return int(text) if text.isascii() and text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True
