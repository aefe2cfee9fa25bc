"""Shared test set-up: single-threaded numerics (the suite runs as 2 xdist workers on 2 cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
