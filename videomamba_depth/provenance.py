"""Provenance recorded in every store and checkpoint: stage, resolved params, backend and package versions.

Deliberately free of timestamps, host names and absolute paths, so identical inputs give identical outputs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sqlite3
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from videomamba_depth import __version__
from videomamba_depth.config import StageConfig

# Packages whose version can change numbers in our outputs; every provenance block records these.
CORE_PACKAGES = ("numpy", "zarr", "numcodecs", "torch")


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``CORE_PACKAGES`` and ``packages`` ('absent' when not installed)."""
    out = {"python": platform.python_version(), "videomamba_depth": __version__}
    for name in (*CORE_PACKAGES, *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(
    stage: str, config: StageConfig | None, *, packages: tuple[str, ...] = (), **extra: Any
) -> dict:
    """The ``provenance`` attribute block: stage name, resolved params, versions and stage-specific extras."""
    return {
        "stage": stage,
        "params": config.to_dict() if config is not None else {},
        "versions": package_versions(*packages),
        **extra,
    }


# Content hashes are cached by file identity and stat (as git's index and DVC's state database do): a stage
# checks the fingerprint of every manifest video on every run, and re-reading thousands of videos of GBs each
# to add one would cost more than the work itself. The key holds the change time, which every write updates
# and which `touch -d` or `rsync -t` cannot set back, so an edited file always misses. A file changed less
# than RACY_S seconds ago is hashed but not cached: its timestamps may not yet tell two writes apart.
DIGEST_CACHE_ENV = "VIDEOMAMBA_DEPTH_DIGEST_CACHE"  # the cache's path; "off" disables it
RACY_S = 2.0


def digest_cache_path() -> Path | None:
    """The sqlite file of cached content hashes: ``$VIDEOMAMBA_DEPTH_DIGEST_CACHE``, else
    ``$XDG_CACHE_HOME/videomamba-depth/sha256.sqlite`` (``~/.cache`` by default); None when disabled."""
    value = os.environ.get(DIGEST_CACHE_ENV)
    if value == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videomamba-depth/sha256.sqlite"


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (recorded for inputs DVC tracks only by path, such as video and intrinsics
    files), cached by the file's identity and stat (:data:`DIGEST_CACHE_ENV`)."""
    path = Path(path).resolve()
    st = path.stat()
    stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cache = _digest_cache()
    digest = cache.get(str(path), stat) if cache is not None else None
    if digest is None:
        digest = _sha256(path)
        if cache is not None and time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_S:
            cache.put(str(path), stat, digest)
    return digest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _DigestCache:
    """A sqlite table ``path -> (dev, ino, size, mtime_ns, ctime_ns, sha256)``, shared by processes.

    A cache that cannot be used (read-only home, a file that is not sqlite) warns once, naming the file,
    and is bypassed from then on: hashes are computed every time, never wrong.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        # Write-ahead log, no fsync per entry (about 2 ms each otherwise: a folder of 100,000 frames would
        # wait minutes); a crash can lose the last entries, never corrupt the file.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, stat TEXT, digest TEXT)")

    def get(self, path: str, stat: tuple[int, ...]) -> str | None:
        try:
            row = self.db.execute("SELECT stat, digest FROM sha256 WHERE path = ?", (path,)).fetchone()
        except sqlite3.Error as exc:
            _disable(self.path, exc)
            return None
        return row[1] if row is not None and row[0] == _stat_text(stat) else None

    def put(self, path: str, stat: tuple[int, ...], digest: str) -> None:
        try:
            # One row per path: an edited file replaces its entry instead of adding one per version.
            self.db.execute("INSERT OR REPLACE INTO sha256 VALUES (?, ?, ?)",
                            (path, _stat_text(stat), digest))
        except sqlite3.Error as exc:
            _disable(self.path, exc)


def _stat_text(stat: tuple[int, ...]) -> str:
    return " ".join(map(str, stat))


# Open caches by (path, process id): a sqlite connection must not cross a fork into a worker process.
_CACHES: dict[tuple[Path, int], _DigestCache | None] = {}


def _digest_cache() -> _DigestCache | None:
    path = digest_cache_path()
    if path is None:
        return None
    key = (path, os.getpid())
    if key not in _CACHES:
        try:
            _CACHES[key] = _DigestCache(path)
        except (OSError, sqlite3.Error) as exc:
            _disable(path, exc)
    return _CACHES[key]


def _disable(path: Path, exc: Exception) -> None:
    warnings.warn(f"{path}: content-hash cache unusable ({exc}); hashing every file in full (set "
                  f"{DIGEST_CACHE_ENV} to another file, or to 'off')", stacklevel=3)
    _CACHES[(path, os.getpid())] = None
