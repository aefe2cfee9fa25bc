"""The pre-training loop: the student's per-frame path on image datasets, against ground-truth depth.

The student is ``train.model`` run with :meth:`VideoMambaDepth.forward_frames`: encoder, camera
conditioning, decoder and head; the temporal blocks are bypassed and frozen (no gradient, not in the
optimizer), so they stay exactly the identity they were initialised as and ``train.init_from: pretrain``
starts video training from this per-frame model. Samples without intrinsics get :func:`default_K` (and,
with ``camera: tokens``, the model's unknown-camera token: ``has_K`` is passed along). The loss compares it
with ground truth or with a frozen image teacher's predictions (``pretrain.teacher``: :mod:`.teachers`); the
cross-context terms add one crop view per image, which the student sees in the same forward pass as the
whole images (one DDP forward per step).

Outputs (``out_dir``, default ``data/pretrain``):

- ``model_latest.safetensors``: weights at the last saved step; ``model_best.safetensors``: weights at the
  validation with the lowest AbsRel (vs ground truth, over the validation images);
  ``epochs/epoch_<e>.safetensors``: weights after every epoch (:func:`steps_per_epoch` steps: the training
  images once, in expectation). All store the model config and the preprocessing (``prepare``'s
  ``long_edge`` / ``pad_multiple``).
- ``config.json``: the resolved pretrain config, model config and preprocessing.
- ``state/state.pt`` (resumable, the ``train`` stage's format: ``training.checkpoint``) and
  ``state/best.safetensors``. A state is resumed only by a run with the same params, model, preprocessing,
  process count, library code and data files (paths, sizes, modification times).
- ``dvclive/``: ``train/*`` losses, ``val/*`` metrics (AbsRel, SqRel, RMSE, RMSE-log, SILog, δ1-3) and
  ``plots/images/rgb_target_prediction/<step>.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from videomamba_depth.codehash import code_fingerprint
from videomamba_depth.datasets import (
    ImageDepthDataset,
    MixedImageDataset,
    MixedImageSampler,
    collate_images,
    open_image_dataset,
)
from videomamba_depth.devices import cpu_threads
from videomamba_depth.inference.intrinsics import DEFAULT_HFOV_DEG, K_from_hfov
from videomamba_depth.losses import (
    feature_alignment_loss,
    gradient_preservation_loss,
    hdn_loss,
    local_global_loss,
    metric_log_l1,
    multiscale_gradient_loss,
    pair_ranking_loss,
    sample_boxes,
    silog_loss,
    ssi_loss,
)
from videomamba_depth.metrics.depth import frame_metrics
from videomamba_depth.models import ModelConfig, VideoMambaDepth, build_student, save_student
from videomamba_depth.pretraining.config import PretrainConfig
from videomamba_depth.pretraining.teachers import WHOLE_VIEW, View, build_image_teacher
from videomamba_depth.training.checkpoint import set_rng_state
from videomamba_depth.training.distributed import Distributed, setup, teardown
from videomamba_depth.training.loop import (
    ResumableRun,
    build_optimizer,
    check_replicas_in_sync,
    open_live,
)
from videomamba_depth.viz import colorize, robust_range
from videomamba_depth.zarrio import atomic_file

OUT_DIR = Path("data/pretrain")
LATEST_FILE, BEST_MODEL_FILE = "model_latest.safetensors", "model_best.safetensors"
EPOCHS_DIR = "epochs"
BEST_METRIC = "val/abs_rel"
# Validation metrics logged (``metrics.depth.frame_metrics`` names), as val/<name>.
VAL_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "delta1", "delta2", "delta3")
# Seed purpose of the crop boxes: they are drawn from (seed, _CROPS, step, rank), a pure function of the step.
_CROPS = 4


@dataclass(frozen=True)
class PretrainResult:
    """Where the run left its weights, and its last and best validation metrics."""

    latest: Path
    best: Path
    steps: int
    best_metric: float
    last_validation: dict[str, float]


def default_K(height: int, width: int) -> np.ndarray:
    """K assumed for an image without intrinsics: horizontal field of view ``DEFAULT_HFOV_DEG`` (60°, the
    ``infer`` default) over the ``width x height`` (padded) image, principal point at its centre.

    Metric depth scales with the focal length, so such samples teach the model depth at that assumed focal;
    datasets with intrinsics (every sample of the synthetic set) are unaffected.
    """
    return K_from_hfov(width, height, DEFAULT_HFOV_DEG)


def with_default_K(K: Tensor, has_K: Tensor, height: int, width: int) -> Tensor:
    """``K`` ``(B, 3, 3)`` with :func:`default_K` where ``has_K`` ``(B,)`` is False."""
    fallback = torch.as_tensor(default_K(height, width), dtype=K.dtype, device=K.device)
    return torch.where(has_K[:, None, None], K, fallback)


def steps_per_epoch(sizes: Sequence[int], batch_size: int, world_size: int) -> int:
    """Steps of one epoch: every training image once (in expectation, as the mixture draws by weight), at
    ``batch_size`` images per step on each of ``world_size`` processes; at least 1."""
    return max(1, math.ceil(sum(sizes) / (batch_size * world_size)))


def data_fingerprint(datasets: Sequence[ImageDepthDataset]) -> str:
    """sha256 over each dataset's config and every listed file's path and contents (and each index file's): a
    state is resumed only on the same data. Contents, not modification times, so the fingerprint saved in the
    state is the same on every machine and a rebuilt set with the same bytes is the same data (the state
    file, an output in dvc.lock, is then byte-identical run to run). Reads every file once: an epoch's I/O."""
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(json.dumps(dataset.config.to_dict(), sort_keys=True).encode())
        index = Path(dataset.config.root) / dataset.config.split
        paths = [index] if index.is_file() else []
        for record in dataset.records:
            paths += [p for p in (record.image, record.depth, record.intrinsics) if p is not None]
        for path in paths:
            with path.open("rb") as file:
                content = hashlib.file_digest(file, "sha256").digest()
            digest.update(f"{path}\0".encode() + content)
    return digest.hexdigest()


def pretrain(
    config: PretrainConfig,
    model_config: ModelConfig,
    preprocessing: Mapping[str, int],
    out_dir: Path = OUT_DIR,
) -> PretrainResult:
    """Pre-train ``model_config``'s per-frame path on ``config.datasets`` at ``preprocessing`` (``long_edge``,
    ``pad_multiple``); see the module docstring for what is written."""
    context = setup(config.device)
    try:
        return _Pretrainer(config, model_config, dict(preprocessing), Path(out_dir), context).run()
    finally:
        teardown(context)


class _PerFrame(nn.Module):
    """``forward`` = the student's :meth:`~VideoMambaDepth.forward_frames`, and with a ``projector`` (the
    feature-alignment head, trained with the student) its features at ``scale`` projected by it, so DDP
    (which hooks ``forward``) synchronises the gradients of both."""

    def __init__(self, model: VideoMambaDepth, projector: nn.Module | None, scale: str) -> None:
        super().__init__()
        self.model, self.projector, self.scale = model, projector, scale

    def forward(self, rgb: Tensor, K: Tensor, has_K: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.projector is None:
            return self.model.forward_frames(rgb, K, has_K), None
        depth, features = self.model.forward_frames_with_features(rgb, K, has_K)
        return depth, self.projector(features[self.scale])


class _Pretrainer(ResumableRun):
    stage = "pretrain"

    def __init__(
        self,
        config: PretrainConfig,
        model_config: ModelConfig,
        preprocessing: dict[str, int],
        out_dir: Path,
        context: Distributed,
    ) -> None:
        self.config, self.out_dir, self.ctx = config, out_dir, context
        self.preprocessing = preprocessing
        model_config = replace(model_config, freeze_encoder=config.freeze_encoder)
        torch.set_num_threads(config.threads or cpu_threads(context.world_size))
        self.train_sets = [open_image_dataset(d, **preprocessing) for d in config.datasets]
        self.val_sets = [open_image_dataset(d, **preprocessing) for d in config.val_datasets]
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(config.seed)
        self.model: VideoMambaDepth = build_student(model_config).to(context.device)
        # Bypassed by forward_frames: frozen, so they stay the identity and are no parameter of the optimizer
        # (AdamW's weight decay would otherwise still move them).
        self.model.temporal.requires_grad_(False)
        self.teacher = build_image_teacher(config, context.device)
        if config.loss.feature_align > 0:  # a 1x1 convolution from the student's features to the teacher's
            channels = self.model.encoder.channels[config.loss.feature_align_scale]
            self.aux = nn.Conv2d(channels, self.teacher.channels, 1).to(context.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, config, self.aux)
        # Kept (disabled) so the state has the train stage's schema.
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=False)
        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and context.device.type == "cuda"
        )
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.step, self.best_metric = 0, math.inf
        self.epoch_steps = steps_per_epoch(
            [len(d) for d in self.train_sets], config.batch_size, context.world_size
        )
        self.running: dict[str, list[float]] = defaultdict(list)
        self.run_identity = {
            **config.run_identity(),
            "model": model_config.to_dict(),
            "preprocessing": preprocessing,
            "world_size": context.world_size,
            "code": code_fingerprint(__name__),
            "data": data_fingerprint(self.train_sets + self.val_sets),
            "teacher_weights": self.teacher.identity(),
        }

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> PretrainResult:
        cfg, ctx = self.config, self.ctx
        rng = self._maybe_resume()
        if rng is None:
            torch.manual_seed(cfg.seed + ctx.rank)
            np.random.seed(cfg.seed + ctx.rank)  # noqa: NPY002 (legacy global generator, for libraries)
            random.seed(cfg.seed + ctx.rank)
        else:
            set_rng_state(rng, ctx.device)
        net: nn.Module = _PerFrame(self.model, self.aux, cfg.loss.feature_align_scale)
        if ctx.world_size > 1:
            net = DistributedDataParallel(
                net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        sampler = MixedImageSampler(
            [len(d) for d in self.train_sets],
            [d.config.weight for d in self.train_sets],
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            steps=cfg.steps,
            start=self.step,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        loader = DataLoader(
            MixedImageDataset(self.train_sets, hflip=cfg.hflip, color_jitter=cfg.color_jitter, seed=cfg.seed),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_images,
            multiprocessing_context="fork" if cfg.num_workers and sys.platform != "win32" else None,
            # Its own generator: the global RNG streams continue across a resume as in an uninterrupted run.
            generator=torch.Generator().manual_seed(cfg.seed + ctx.rank),
        )
        live = open_live(self.out_dir / "dvclive", self.step) if ctx.is_main else None
        last_validation: dict[str, float] = {}
        progress = tqdm(
            total=cfg.steps, initial=self.step, desc="pretrain", unit="step", disable=not ctx.is_main,
            file=sys.stderr,
        )
        for batch in loader:
            terms = self._train_step(net, batch)
            self.step += 1
            for name, value in terms.items():
                self.running[name].append(value)
            progress.update(1)
            progress.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{self.scheduler.get_last_lr()[-1]:.2e}")
            last = self.step == cfg.steps
            if ctx.is_main and (self.step % cfg.log_every == 0 or last):
                live.step = self.step
                for name, values in self.running.items():
                    live.log_metric(f"train/{name}", float(np.mean(values)))
                live.log_metric("train/lr", self.scheduler.get_last_lr()[-1])
                self.running.clear()
            if ctx.is_main and (self.step % cfg.val_every == 0 or last):
                last_validation = self._validate(live)
            if ctx.is_main and cfg.image_every and (self.step % cfg.image_every == 0 or last):
                self._log_images(live)
            if ctx.is_main and self.step % self.epoch_steps == 0:
                save_student(self._epoch_file(self.step // self.epoch_steps), self.model, self.preprocessing)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                self._save_state()
        progress.close()
        check_replicas_in_sync(self.model, ctx)
        if ctx.is_main:
            self._write_outputs(live)
        ctx.barrier()
        return PretrainResult(
            self.out_dir / LATEST_FILE, self.out_dir / BEST_MODEL_FILE, self.step, self.best_metric,
            last_validation,
        )

    # ----------------------------------------------------------------------------------------------- steps
    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``rgb`` ``(B, 3, H, W)``, ``K`` ``(B, 3, 3)`` (:func:`default_K` filled in) and ``has_K``
        ``(B,)``, on the device."""
        rgb = batch["rgb"].to(self.ctx.device, non_blocking=True)
        K = with_default_K(batch["K"], batch["has_K"], *rgb.shape[-2:])
        return rgb, K.to(self.ctx.device), batch["has_K"].to(self.ctx.device)

    def _train_step(self, net: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimizer step on a batch of images; returns the loss terms (and ``total``, ``grad_norm``)."""
        seeds = tuple((d, i, WHOLE_VIEW) for d, i in zip(batch["dataset"].tolist(), batch["index"].tolist(),
                                                          strict=True))
        rgb, K, has_K = self._inputs(batch)
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        view = View(rgb, K, batch["depth"], batch["valid"], batch["image"], seeds)
        crop = boxes = None
        if self.config.loss.uses_crops:
            rng = np.random.default_rng([self.config.seed, _CROPS, self.step, self.ctx.rank])
            boxes = sample_boxes(rng, len(rgb), tuple(rgb.shape[-2:]), self.config.loss.crop_fraction)
            crop = view.crop(boxes)
        # The student sees the crop views (when the shared-context term needs its prediction there) in the
        # same forward pass as the whole images: the model is per image, and DDP wants one forward per step.
        with_crops = self.config.loss.shared_context > 0
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if with_crops:
                # A crop view's K is its image's K (known or assumed) zoomed, so it shares the image's has_K.
                depth, features = net(torch.cat([rgb, crop.rgb]), torch.cat([K, crop.K]),
                                      torch.cat([has_K, has_K]))
            else:
                depth, features = net(rgb, K, has_K)
        total, terms = self._loss(depth, features, batch, view, crop, boxes)
        total.backward()
        if self.config.grad_clip > 0:
            parameters = [*self.model.parameters(), *(self.aux.parameters() if self.aux is not None else ())]
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        return terms

    def _loss(
        self,
        depth: Tensor,
        features: Tensor | None,
        batch: dict[str, Tensor],
        view: View,
        crop: View | None,
        boxes: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted sum of the enabled terms.

        Args:
            depth: ``(B, H, W)`` student depth on the images, then ``(B, H, W)`` more on the crop views when
                the shared-context term is on.
            features: ``(B [+ B], C, h, w)`` projected student features (feature alignment), or None.
            batch: the batch on the device (``pairs`` and ``pairs_valid`` for the ranking term).
            view: the images; crop, boxes: their crop views and boxes ``(B, 4)`` (cross-context terms).
        """
        cfg = self.config.loss
        weights = cfg.weights()
        size = len(view.rgb)
        with torch.no_grad(), self._autocast():
            target = self.teacher(view, features="feature_align" in weights)
            crop_target = self.teacher(crop) if crop is not None else None
        # The spatial terms take videos (B, N, H, W): every image is a one-frame clip.
        pred, gt, valid = depth[:size, None], target.depth[:, None], target.valid[:, None]
        compute = {
            "metric_l1": lambda: metric_log_l1(pred, gt, valid),
            "ssi": lambda: ssi_loss(pred, gt, valid, trim=cfg.ssi_trim),
            "grad": lambda: multiscale_gradient_loss(pred, gt, valid, scales=cfg.grad_scales),
            "silog": lambda: silog_loss(pred, gt, valid, lam=cfg.silog_lambda),
            "ranking": lambda: pair_ranking_loss(depth[:size], batch["pairs"], batch["pairs_valid"]),
            "hdn": lambda: hdn_loss(pred, gt, valid, levels=cfg.hdn_levels, mode=cfg.hdn_mode),
            "grad_preserve": lambda: gradient_preservation_loss(pred, gt, valid, scales=cfg.grad_scales),
            "shared_context": lambda: hdn_loss(
                depth[size:, None], crop_target.depth[:, None], crop_target.valid[:, None],
                levels=cfg.hdn_levels, mode=cfg.hdn_mode,
            ),
            "local_global": lambda: local_global_loss(
                depth[:size], boxes, crop_target.depth, crop_target.valid, trim=cfg.ssi_trim
            ),
            "feature_align": lambda: feature_alignment_loss(features[:size], target.features),
        }
        values = {name: compute[name]() for name in weights}
        total = sum(weight * values[name] for name, weight in weights.items())
        logged = {name: float(v.detach()) for name, v in values.items()}
        return total, {"total": float(total.detach()), **logged}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------------ validation
    @torch.inference_mode()
    def _predict(self, batch: dict[str, Tensor]) -> Tensor:
        self.model.eval()
        with self._autocast():
            return self.model.forward_frames(*self._inputs(batch)).float().cpu()

    def _val_batches(self) -> Any:
        size = self.config.batch_size
        for dataset in self.val_sets:
            for start in range(0, len(dataset), size):
                yield collate_images([dataset[i] for i in range(start, min(start + size, len(dataset)))])

    def _validate(self, live: Any) -> dict[str, float]:
        """Metrics of every validation image vs its ground truth (valid pixels), averaged over images."""
        per_image: dict[str, list[np.ndarray]] = defaultdict(list)
        for batch in self._val_batches():
            depth = self._predict(batch)
            gt = batch["depth"].numpy()
            mask = batch["valid"].numpy() & (gt > 0)
            for name, values in frame_metrics(depth.numpy(), gt, mask).items():
                per_image[name].append(values)
        metrics = {}
        for name in VAL_METRICS:
            values = np.concatenate(per_image[name]) if per_image else np.zeros(0)
            if np.isfinite(values).any():  # images without metric depth (relative-only sets) are NaN
                metrics[f"val/{name}"] = float(np.nanmean(values))
        for name, value in metrics.items():
            live.log_metric(name, value)
        if metrics.get(BEST_METRIC, math.inf) < self.best_metric:
            self.best_metric = metrics[BEST_METRIC]
            save_student(self._best_in_state, self.model, self.preprocessing)
        live.make_summary()
        return metrics

    def _log_images(self, live: Any) -> None:
        """rgb | target | prediction of the first validation image (else the first training image)."""
        dataset = (self.val_sets or self.train_sets)[0]
        batch = collate_images([dataset[0]])
        depth = self._predict(batch)[0].numpy()
        target, valid = batch["depth"][0].numpy(), batch["valid"][0].numpy()
        vmin, vmax = robust_range(target, valid) if valid.any() else robust_range(depth, np.ones_like(valid))
        strip = np.concatenate(
            [
                batch["rgb"][0].permute(1, 2, 0).numpy(),
                colorize(target, vmin, vmax, valid=valid),
                colorize(depth, vmin, vmax),
            ],
            axis=1,
        )
        live.log_image(f"rgb_target_prediction/{self.step:06d}.png", strip)

    # --------------------------------------------------------------------------------- state and outputs
    def _epoch_file(self, epoch: int) -> Path:
        return self.out_dir / EPOCHS_DIR / f"epoch_{epoch:03d}.safetensors"

    def _discard_stale_outputs(self) -> None:
        """Another run's best and epoch weights must not pass for this run's."""
        super()._discard_stale_outputs()
        for stale in (self.out_dir / EPOCHS_DIR).glob("epoch_*.safetensors"):
            stale.unlink()

    def _save_state(self) -> None:
        """The resumable state (:class:`ResumableRun`) and ``model_latest``; a collective call under DDP."""
        super()._save_state()
        if self.ctx.is_main:
            save_student(self.out_dir / LATEST_FILE, self.model, self.preprocessing)

    def _write_outputs(self, live: Any) -> None:
        if math.isinf(self.best_metric):  # never validated on metric depth: best = latest
            save_student(self.out_dir / BEST_MODEL_FILE, self.model, self.preprocessing)
        else:
            with atomic_file(self.out_dir / BEST_MODEL_FILE) as tmp:
                shutil.copyfile(self._best_in_state, tmp)
        resolved = {
            "pretrain": self.config.to_dict(),
            "model": self.model.config.to_dict(),
            "preprocessing": self.preprocessing,
        }
        with atomic_file(self.out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(resolved, indent=2) + "\n")
        live.end()
