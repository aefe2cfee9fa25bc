"""What evaluation reads for one held-out video: prepared frames, teacher cache, flow cache, ground truth.

Evaluation runs at the prepared geometry (the resolution the teacher and student work at). Held-out
clips are short, so a video's arrays are read whole (a few MB at 224 x 168); long videos are the ``infer``
command's job, which streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videomamba_depth.metrics import pose_c2w_from_relative
from videomamba_depth.zarrio import StoreError, open_store, require_arrays

PREPARED_ARRAYS = ("rgb", "valid")
TEACHER_ARRAYS = ("depth", "valid", "K_used")
FLOW_ARRAYS = ("flow_fwd", "consistent", "static", "rel_pose", "pose_valid")
GT_ARRAYS = ("depth", "pose_c2w", "K", "motion_mask")


@dataclass(frozen=True)
class EvalVideo:
    """One video at the prepared geometry (``T`` frames of ``H x W``).

    - ``rgb`` ``(T, H, W, 3)`` uint8, ``image`` ``(H, W)`` bool (image pixels, not padding);
    - ``K`` ``(T, 3, 3)``: the intrinsics the student runs with, the teacher's ``K_used`` (as in training:
      the given K, else the teacher's anchored estimate);
    - ``teacher`` ``(T, H, W)`` float32 metres, ``teacher_valid`` ``(T, H, W)`` bool;
    - flow: ``flow_fwd`` ``(T-1, H, W, 2)`` pixels, ``consistent``/``static`` ``(T-1, H, W)`` bool;
    - ``reference`` ``(T, H, W)`` metres: ground truth when the prepared store has a ``gt`` group, else the
      teacher (``reference_kind`` says which); ``reference_valid`` ``(T, H, W)`` bool;
    - ``pose_c2w`` ``(T, 4, 4)`` and ``K_eval`` ``(T, 3, 3)`` for TAE: ground truth, else the flow stage's
      chained ``rel_pose`` and ``K``; ``pose_known`` ``(T-1,)`` bool: pairs with a known relative pose;
    - ``motion`` ``(T, H, W)`` bool: the ground truth's motion mask (the pixel shows an independently moving
      object), None without ground truth.
    """

    name: str
    rgb: np.ndarray
    image: np.ndarray
    K: np.ndarray
    teacher: np.ndarray
    teacher_valid: np.ndarray
    flow_fwd: np.ndarray
    consistent: np.ndarray
    static: np.ndarray
    reference_kind: str
    reference: np.ndarray
    reference_valid: np.ndarray
    pose_c2w: np.ndarray
    K_eval: np.ndarray
    pose_known: np.ndarray
    motion: np.ndarray | None

    @property
    def num_frames(self) -> int:
        return len(self.rgb)


def load_eval_video(name: str, prepared: Path, teacher: Path, flow: Path) -> EvalVideo:
    """Read and cross-check the stores of video ``name``; errors name the store that disagrees."""
    p_group, t_group, f_group = open_store(prepared, "prepared"), open_store(teacher, "teacher"), open_store(
        flow, "flow"
    )
    require_arrays(p_group, prepared, PREPARED_ARRAYS)
    require_arrays(t_group, teacher, TEACHER_ARRAYS)
    require_arrays(f_group, flow, FLOW_ARRAYS)
    rgb = p_group["rgb"][:]
    T, H, W = rgb.shape[:3]
    expected = {
        (teacher, "depth"): (t_group["depth"].shape, (T, H, W)),
        (flow, "static"): (f_group["static"].shape, (max(T - 1, 0), H, W)),
        (flow, "flow_fwd"): (f_group["flow_fwd"].shape, (max(T - 1, 0), H, W, 2)),
    }
    for (path, array), (shape, want) in expected.items():
        if shape != want:
            raise StoreError(f"{path}: '{array}' has shape {shape}, but {prepared} ({T} frames of {W}x{H}) "
                             f"needs {want}; re-run the stages of {name}")
    if T < 2:
        raise StoreError(f"{prepared}: {T} frame(s); temporal metrics need at least 2")
    image = p_group["valid"][:]
    teacher_depth = t_group["depth"][:].astype(np.float32)
    teacher_valid = t_group["valid"][:] & image
    K = t_group["K_used"][:]
    pose_valid = f_group["pose_valid"][:].astype(bool)
    if "gt" in p_group:
        gt = p_group["gt"]
        require_arrays(gt, prepared / "gt", GT_ARRAYS)
        reference = gt["depth"][:].astype(np.float32)
        reference_valid = image & (reference > 0)
        pose_c2w, K_eval = gt["pose_c2w"][:], gt["K"][:]
        kind, pose_known = "ground_truth", np.ones(T - 1, dtype=bool)
        motion = gt["motion_mask"][:].astype(bool)
        if reference.shape != (T, H, W) or motion.shape != (T, H, W):
            raise StoreError(f"{prepared}: ground truth 'depth' {reference.shape} and 'motion_mask' "
                             f"{motion.shape} must match its {T} frames of {W}x{H}; re-run prepare")
    else:
        reference, reference_valid = teacher_depth, teacher_valid
        pose_c2w, K_eval = pose_c2w_from_relative(f_group["rel_pose"][:]), K
        kind, pose_known, motion = "teacher", pose_valid, None
    return EvalVideo(
        name=name,
        rgb=rgb,
        image=image,
        K=K,
        teacher=teacher_depth,
        teacher_valid=teacher_valid,
        flow_fwd=f_group["flow_fwd"][:].astype(np.float32),
        consistent=f_group["consistent"][:],
        static=f_group["static"][:],
        reference_kind=kind,
        reference=reference,
        reference_valid=reference_valid,
        pose_c2w=pose_c2w,
        K_eval=K_eval,
        pose_known=pose_known,
        motion=motion,
    )
