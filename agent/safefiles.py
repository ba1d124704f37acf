"""Writing files as root on other people's hosts: never through a link that was already there.

tcpclose runs as root and writes where it is told (-o DIR, --record, --transitions),
often into directories other users can write in.  A user who plants a symbolic link
(or a hard link, or a FIFO) where a file will go must not get root to write through it:

  - a directory is opened once, with O_NOFOLLOW, and every file is made inside it by
    its descriptor (openat), so a link planted in place of the directory is refused
    and one planted above it later changes nothing;
  - a directory owned by another user and writable by others (a shared /tmp subfolder)
    is refused unless --force: anything written there could be swapped underneath;
  - the files of -o are written to a new temporary file (O_CREAT|O_EXCL|O_NOFOLLOW)
    and renamed over the name: a link planted at the name is replaced, never followed,
    and a reader never sees half a file;
  - a stream (--record, --transitions) is opened with O_NOFOLLOW and refused unless it
    is a regular file with one link.
"""
from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from .errors import CannotWrite

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path, why: str, fix: str = "give a path of your own", what: str = "") -> CannotWrite:
    return CannotWrite(f"cannot write {what + ' ' if what else ''}to {path}: {why}; {fix}")


def _open_directory(path: Path, force: bool, create: bool, what: str = "") -> int:
    """A descriptor of directory `path` (made if `create` and missing), checked to be ours;
    `what` names the file it is for in the error (a stream's directory)."""
    if create:  # the directory itself is made here, not followed if a link stands there
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _refuse(path, exc.strerror) from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:  # O_NOFOLLOW met a link: ELOOP, or ENOTDIR with O_DIRECTORY
        why = "it is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink() else exc.strerror
        raise _refuse(path, why, "give a directory of your own", what) from None
    st = os.fstat(fd)
    if not force and st.st_uid != os.geteuid() and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise _refuse(path, f"the directory belongs to uid {st.st_uid} and others can write in it, so a file "
                            "there could be a planted link", "give a directory of your own, or --force", what)
    return fd


class OutputDir:
    """The directory of -o: opened (and made) before tracing starts, so that one that cannot
    be written fails at once, not after the run."""

    def __init__(self, path: Path, force: bool = False, fd: int | None = None):
        """fd: the directory, opened already (subdirectory())."""
        self.path = Path(path)
        self._fd = _open_directory(self.path, force, create=True) if fd is None else fd
        with self._new(".tcpclose-probe") as f:  # a read-only or full file system says so now
            f.write("")
        os.unlink(".tcpclose-probe", dir_fd=self._fd)

    def subdirectory(self, name: str) -> "OutputDir":
        """Directory `name` in this one, made new (it must not be there: a link or a directory
        planted at the name is refused), opened by its name in this one, never through a link."""
        try:
            os.mkdir(name, 0o755, dir_fd=self._fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        except OSError as exc:
            raise _refuse(self.path / name, exc.strerror, "give a directory of your own") from None
        return OutputDir(self.path / name, fd=fd)

    def existing_subdirectory(self, name: str) -> "OutputDir | None":
        """Directory `name` in this one as it is, opened by its name in this one, never through
        a link; None: not there, or not a directory (a link planted at the name)."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        except OSError:
            return None
        try:
            return OutputDir(self.path / name, fd=fd)
        except CannotWrite:
            os.close(fd)
            raise

    def holds_file(self, name: str) -> bool:
        """Is `name` here a regular file with one link (not a link, FIFO or device planted there)?"""
        try:
            st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1

    @property
    def opened_path(self) -> Path:
        """A path to this very directory for code that reads by path (/proc/self/fd/N): what
        its name points to now does not matter."""
        return Path(f"/proc/self/fd/{self._fd}")

    def names(self) -> list[str]:
        """What this directory holds, by name."""
        return os.listdir(self._fd)

    def remove_subdirectory(self, name: str) -> None:
        """Directory `name` and the files in it (only files: a directory in it stays, and so
        does it), never through a link: one planted at `name` is left alone."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        except OSError:  # gone, or a link planted there
            return
        try:
            for entry in os.listdir(fd):
                try:
                    os.unlink(entry, dir_fd=fd)
                except OSError:
                    pass
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=self._fd)
        except OSError:
            pass

    @contextmanager
    def _new(self, name: str, binary: bool = False) -> Iterator[TextIO | BinaryIO]:
        with (os.fdopen(self._new_fd(name), "wb") if binary
              else os.fdopen(self._new_fd(name), "w", encoding="utf-8", newline="")) as f:
            yield f

    def _new_fd(self, name: str, access: int = os.O_WRONLY) -> int:
        try:
            os.unlink(name, dir_fd=self._fd)  # a temporary file left by a killed run (never followed)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _refuse(self.path / name, exc.strerror) from None
        try:
            return os.open(name, (_NEW_FILE & ~os.O_WRONLY) | access, 0o644, dir_fd=self._fd)
        except OSError as exc:
            raise _refuse(self.path / name, exc.strerror) from None

    def appending(self, name: str) -> BinaryIO:
        """`name` made anew under its own name, to be written as the run goes and read back
        at its end (what a run killed midway leaves there is what it had written)."""
        return os.fdopen(self._new_fd(name, os.O_RDWR), "w+b")

    def rename(self, name: str, new_name: str) -> None:
        """`name` renamed over `new_name`, in this directory (a link there is replaced, not followed)."""
        try:
            os.replace(name, new_name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except OSError as exc:
            raise _refuse(self.path / new_name, exc.strerror) from None

    def replacing_binary(self, name: str):
        """replacing(), in bytes."""
        return self.replacing(name, binary=True)

    @contextmanager
    def replacing(self, name: str, binary: bool = False) -> Iterator[TextIO | BinaryIO]:
        """A file to write `name` into: a new temporary file, renamed over `name` once whole."""
        temporary = f".{name}.tcpclose-tmp"
        try:
            with self._new(temporary, binary) as f:
                yield f
            os.replace(temporary, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException as exc:
            try:
                os.unlink(temporary, dir_fd=self._fd)
            except OSError:
                pass
            if isinstance(exc, OSError):  # a full or failing disk: the file that was there stays whole
                raise _refuse(self.path / name, exc.strerror) from None
            raise

    def write_text(self, name: str, text: str) -> Path:
        with self.replacing(name) as f:
            f.write(text)
        return self.path / name

    def remove(self, names) -> None:
        """Remove these files if an earlier run left them (unlink never follows a link)."""
        for name in names:
            try:
                os.unlink(name, dir_fd=self._fd)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Done with the directory (again: nothing more)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_stream(path, what: str, force: bool = False, binary: bool = False) -> TextIO | BinaryIO:
    """A file written as it goes (--record, --transitions): made or emptied, never through a
    link, and only a regular file with one name; CannotWrite names the path and why."""
    path = Path(path)
    parent = _open_directory(path.parent, force, create=False, what=f"the {what} (into {path.name})")
    try:
        # O_NONBLOCK: a FIFO planted at the name fails at once (ENXIO) instead of blocking
        fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                     dir_fd=parent)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise CannotWrite(f"cannot write the {what} to {path}: {why}; give a path of your own") from None
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        why = "it is not a regular file" if not stat.S_ISREG(st.st_mode) else "it has other names (hard links)"
        raise CannotWrite(f"cannot write the {what} to {path}: {why}; give a path of your own")
    os.set_blocking(fd, True)
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")


# Where scratch files go unless TMPDIR says otherwise: /var/tmp is on disk by convention,
# while /tmp is a tmpfs on many systems, where a large file would be memory again.
SCRATCH_DIR = "/var/tmp"


def scratch_directory() -> str | None:
    """$TMPDIR, else /var/tmp, else None (tempfile's own choice) where /var/tmp cannot be written."""
    return os.environ.get("TMPDIR") or (SCRATCH_DIR if os.access(SCRATCH_DIR, os.W_OK) else None)
