"""Shared test set-up: single-threaded numerics (the suite runs as 2 xdist workers on 2 cores), a content-hash
cache of the run's own."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Content hashes cached in a folder of the run's own, not the user's ~/.cache (stages run as subprocesses
# inherit it).
if "VIDEOMAMBA_DEPTH_DIGEST_CACHE" not in os.environ:
    _digests = tempfile.mkdtemp(prefix="vmd-digests-")
    atexit.register(shutil.rmtree, _digests, ignore_errors=True)
    os.environ["VIDEOMAMBA_DEPTH_DIGEST_CACHE"] = os.path.join(_digests, "sha256.sqlite")

import torch

torch.set_num_threads(1)
