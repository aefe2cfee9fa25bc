"""The content-hash cache behind ``file_sha256``: hits skip reading, any edit misses, a broken cache warns."""

import hashlib
import os
import time

import pytest

from videomamba_depth import provenance
from videomamba_depth.provenance import DIGEST_CACHE_ENV, file_sha256


@pytest.fixture
def reads(monkeypatch, tmp_path):
    """A fresh cache file; returns the list of paths hashed in full."""
    monkeypatch.setenv(DIGEST_CACHE_ENV, str(tmp_path / "cache" / "sha256.sqlite"))
    monkeypatch.setattr(provenance, "RACY_S", 0.0)
    done = []
    real = provenance._sha256

    def counting(path):
        done.append(path)
        return real(path)

    monkeypatch.setattr(provenance, "_sha256", counting)
    return done


def test_a_cached_file_is_not_read_again(tmp_path, reads):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"frames" * 1000)
    expected = hashlib.sha256(video.read_bytes()).hexdigest()
    assert file_sha256(video) == expected and len(reads) == 1
    assert file_sha256(tmp_path / "." / "clip.mp4") == expected and len(reads) == 1


def test_an_edit_misses_even_with_size_and_mtime_restored(tmp_path, reads):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"a" * 4096)
    before = video.stat()
    first = file_sha256(video)
    time.sleep(0.05)  # past the file system's timestamp granularity
    video.write_bytes(b"b" * 4096)
    os.utime(video, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -d` or `rsync -t` would
    assert video.stat().st_mtime_ns == before.st_mtime_ns and video.stat().st_size == before.st_size
    assert file_sha256(video) == hashlib.sha256(b"b" * 4096).hexdigest() != first
    assert len(reads) == 2


def test_a_file_changed_just_now_is_not_cached(tmp_path, reads, monkeypatch):
    monkeypatch.setattr(provenance, "RACY_S", 60.0)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x" * 100)
    file_sha256(video)
    file_sha256(video)
    assert len(reads) == 2


def test_an_unusable_cache_warns_naming_it_and_hashes_anyway(tmp_path, monkeypatch):
    bad = tmp_path / "not-a-database.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    monkeypatch.setenv(DIGEST_CACHE_ENV, str(bad))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"y" * 100)
    with pytest.warns(UserWarning, match="not-a-database.sqlite: content-hash cache unusable"):
        assert file_sha256(video) == hashlib.sha256(b"y" * 100).hexdigest()
    assert bad.read_bytes() == b"this is not sqlite" * 100, "the user's file is left as it was"


def test_off_disables_the_cache(tmp_path, reads, monkeypatch):
    monkeypatch.setenv(DIGEST_CACHE_ENV, "off")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"z" * 100)
    file_sha256(video)
    file_sha256(video)
    assert len(reads) == 2
