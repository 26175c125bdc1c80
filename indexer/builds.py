"""Versioned, immutable index builds under one directory, and the pointer that says which is served.

::

    DIR/current -> builds/000007-20261201T093012Z     a relative symlink, switched by one rename
    DIR/builds/000007-20261201T093012Z/               one finished build (read-only files)
    DIR/builds/000006-20261130T180455Z/               an older snapshot, kept for rollback

``dpr index --out DIR`` writes a new build into ``builds/`` and then switches ``current`` to it, so
a server that opened the previous build keeps reading that build's files (the SQLite store, the
vectors) until it is told to reload: an in-place rebuild can never hand it another build's passages.
No file of a published build is written again. A build is deleted (oldest first, beyond the newest
``keep``) only when no process holds it: a reader takes a shared ``flock`` on the build directory
for as long as it has the build open (:class:`BuildLease`), and the pruner takes an exclusive one.

A legacy single-directory index (``manifest.json`` directly in ``DIR``) is read as one build; the
first versioned build written into it leaves those files alone (a running server may still read
them), and rolling back past the first versioned build serves them again.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import IndexLoadError
from indexer.manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)

BUILDS_DIR = "builds"
CURRENT = "current"
# The current build plus two snapshots to roll back to.
DEFAULT_KEEP = 3
LEGACY = "legacy"
_BUILD_RE = re.compile(r"^(\d{6})-\d{8}T\d{6}Z$")
_TMP_PREFIX = ".tmp-"


def build_seq(name: str) -> int | None:
    """The sequence number of a build directory name, or None for anything else."""
    match = _BUILD_RE.match(name)
    return int(match.group(1)) if match else None


def is_index_root(path: Path) -> bool:
    """Whether ``path`` holds a versioned layout or a legacy single-directory index."""
    return (path / CURRENT).is_symlink() or (path / BUILDS_DIR).is_dir() or (path / MANIFEST_FILE).is_file()


def current_build(index_dir: str | Path) -> Path:
    """The build directory to open for ``index_dir`` (absolute, resolved).

    ``index_dir`` may be a versioned root (its ``current`` build), a legacy single-directory index,
    or one build directory itself (to serve a snapshot). Raises :class:`IndexLoadError`.
    """
    index_dir = Path(index_dir)
    link = index_dir / CURRENT
    if link.is_symlink():
        target = os.readlink(link)
        parts = Path(target).parts
        # Only ever written as builds/<name>; anything else was put there by hand or by an attacker.
        if len(parts) != 2 or parts[0] != BUILDS_DIR or build_seq(parts[1]) is None:
            raise IndexLoadError(f"{link}: points to {target!r}, not to a build under {BUILDS_DIR}/")
        build = index_dir / BUILDS_DIR / parts[1]
        if not (build / MANIFEST_FILE).is_file():
            raise IndexLoadError(f"{link}: its build {parts[1]} is missing or unfinished")
        return build.resolve()
    if link.exists():
        raise IndexLoadError(f"{link}: expected a symlink to a build, found a {'directory' if link.is_dir() else 'file'}"
                             " (was the index copied without preserving symlinks? copy it with `cp -a`)")
    if (index_dir / MANIFEST_FILE).is_file():
        return index_dir.resolve()
    if not index_dir.is_dir():
        raise IndexLoadError(f"{index_dir}: no such index directory")
    raise IndexLoadError(f"{index_dir}: not an index directory (no {CURRENT} build and no {MANIFEST_FILE})")


def build_name(build_dir: Path, index_dir: Path | None = None) -> str:
    """How a build is named to users: its directory name, or ``legacy`` for a single-directory index."""
    if index_dir is not None and build_dir.resolve() == Path(index_dir).resolve():
        return LEGACY
    return build_dir.name if build_seq(build_dir.name) is not None else LEGACY


@dataclass(frozen=True)
class BuildInfo:
    name: str
    path: Path
    current: bool


def list_builds(index_dir: str | Path) -> list[BuildInfo]:
    """Finished builds of ``index_dir``, oldest first; a legacy root build comes first as ``legacy``."""
    index_dir = Path(index_dir)
    try:
        current = current_build(index_dir)
    except IndexLoadError:
        current = None
    out = []
    if (index_dir / MANIFEST_FILE).is_file():
        out.append(BuildInfo(LEGACY, index_dir.resolve(), current == index_dir.resolve()))
    builds = index_dir / BUILDS_DIR
    if builds.is_dir():
        named = sorted((build_seq(p.name), p) for p in builds.iterdir()
                       if build_seq(p.name) is not None and (p / MANIFEST_FILE).is_file())
        out.extend(BuildInfo(p.name, p.resolve(), current == p.resolve()) for _, p in named)
    return out


# ----------------------------------------------------------------------------- leases


def _lock_dir(path: Path, mode: int) -> int | None:
    """An fd of directory ``path`` holding ``flock(mode | LOCK_NB)``, or None if another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class BuildLease:
    """A shared lock on a build directory for as long as a reader has it open; prune skips it."""

    def __init__(self, build_dir: Path) -> None:
        self.path = build_dir
        try:
            fd = _lock_dir(build_dir, fcntl.LOCK_SH)
        except OSError as e:
            raise IndexLoadError(f"{build_dir}: cannot open the build ({e.strerror})") from e
        if fd is None:
            raise IndexLoadError(f"{build_dir}: the build is being deleted")
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)            # closing the fd drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# ----------------------------------------------------------------------------- publishing


def check_target(index_dir: Path) -> None:
    """A build replaces what ``index_dir`` serves: never let that be a directory of someone's files."""
    if index_dir.exists() and not index_dir.is_dir():
        raise ValueError(f"{index_dir}: exists and is not a directory")
    if index_dir.is_dir() and any(index_dir.iterdir()) and not is_index_root(index_dir):
        raise ValueError(f"{index_dir}: exists and is not an index directory (no {CURRENT}, {BUILDS_DIR}/ or "
                         f"{MANIFEST_FILE}); refusing to write into it")
    link = index_dir / CURRENT
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link}: is not a symlink to a build (copied without preserving symlinks?); "
                         "refusing to replace it")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(root: Path) -> None:
    """fsync every file (a power loss after the rename must not leave empty files) and make it read-only."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _next_seq(builds: Path) -> int:
    seqs = [s for p in builds.iterdir() if (s := build_seq(p.name)) is not None]
    return max(seqs, default=0) + 1


def _claim_name(builds: Path, tmp: Path) -> Path:
    """Rename ``tmp`` to the next free build name; a concurrent builder that took it makes us take the next."""
    for _ in range(1000):
        name = f"{_next_seq(builds):06d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        final = builds / name
        try:
            os.rename(tmp, final)          # fails if a (non-empty) directory of that name exists
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return final
    raise RuntimeError(f"{builds}: could not claim a build name")


def switch_current(index_dir: Path, build: str) -> None:
    """Point ``index_dir/current`` at ``builds/<build>`` (or remove it for the legacy root) in one rename."""
    link = index_dir / CURRENT
    if build == LEGACY:
        if link.is_symlink():
            link.unlink()
    else:
        tmp = index_dir / f".{CURRENT}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(f"{BUILDS_DIR}/{build}", tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(index_dir)


@contextlib.contextmanager
def new_build(index_dir: str | Path) -> Iterator[Path]:
    """Yield an empty directory to write a build into; on success it is published and made current.

    On any exception the directory is removed and ``index_dir`` serves what it served before.
    Files are made read-only and fsynced before the build gets its name; ``current`` is switched
    last, so a crash at any point leaves the previous build current and whole.
    """
    index_dir = Path(index_dir)
    check_target(index_dir)
    builds = index_dir / BUILDS_DIR
    builds.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=builds))
    # Held while building: prune removes only unlocked temporary directories (a builder that died).
    lock = _lock_dir(tmp, fcntl.LOCK_EX)
    try:
        yield tmp
        _seal(tmp)
        final = _claim_name(builds, tmp)
        _fsync_dir(builds)
        if (index_dir / MANIFEST_FILE).is_file() and not (index_dir / CURRENT).is_symlink():
            logger.warning("%s: was a single-directory index; it now holds versioned builds under %s/. The old "
                           "files stay where they are for servers still reading them (`dpr index rollback` "
                           "serves them again); delete them once every server has reloaded", index_dir, BUILDS_DIR)
        switch_current(index_dir, final.name)
        logger.info("published build %s of %s", final.name, index_dir)
    except BaseException:
        _remove_tree(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _remove_tree(path: Path) -> None:
    # Read-only files go with their (writable) directory; nothing to chmod back.
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- rollback and pruning


def rollback(index_dir: str | Path) -> BuildInfo:
    """Make the build before the current one current; returns it. Raises ValueError if there is none."""
    index_dir = Path(index_dir)
    builds = list_builds(index_dir)
    position = next((i for i, b in enumerate(builds) if b.current), None)
    if position is None:
        raise ValueError(f"{index_dir}: has no current build to roll back from")
    if position == 0:
        raise ValueError(f"{index_dir}: build {builds[0].name} is the oldest one kept; nothing to roll back to")
    target = builds[position - 1]
    # Held across the switch, so a concurrent prune cannot delete the build being made current.
    lease = BuildLease(target.path)
    try:
        switch_current(index_dir, target.name)
    finally:
        lease.release()
    logger.info("%s: rolled back from %s to %s", index_dir, builds[position].name, target.name)
    return BuildInfo(target.name, target.path, True)


def prune_builds(index_dir: str | Path, keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete builds beyond the newest ``keep`` that no process holds, and dead builders' temporaries.

    The current build is always kept, and so is the legacy root (whose files are not ours to move).
    Returns the names deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    index_dir = Path(index_dir)
    builds_dir = index_dir / BUILDS_DIR
    if not builds_dir.is_dir():
        return []
    deleted = []
    for tmp in builds_dir.glob(f"{_TMP_PREFIX}*"):
        if tmp.is_dir() and (fd := _lock_dir(tmp, fcntl.LOCK_EX)) is not None:
            try:
                _remove_tree(tmp)
            finally:
                os.close(fd)
    versioned = [b for b in list_builds(index_dir) if b.name != LEGACY]
    for build in versioned[:-keep] if len(versioned) > keep else []:
        if build.current:
            continue
        fd = _lock_dir(build.path, fcntl.LOCK_EX)
        if fd is None:
            logger.info("%s: keeping build %s, a server still has it open", index_dir, build.name)
            continue
        try:
            if current_build(index_dir) == build.path:       # rolled back to it meanwhile
                continue
            doomed = builds_dir / f".deleting-{build.name}"
            os.rename(build.path, doomed)
            _remove_tree(doomed)
            deleted.append(build.name)
        finally:
            os.close(fd)
    for stale in builds_dir.glob(".deleting-*"):              # a pruner killed mid-delete
        _remove_tree(stale)
    if deleted:
        logger.info("%s: deleted old build(s) %s (keeping the newest %d)", index_dir, ", ".join(deleted), keep)
    return deleted
