"""Optical flow, forward–backward consistency, camera motion and static-motion masks (the ``flow`` stage).

- :mod:`~videomamba_depth.flow.backends`: DIS (OpenCV, default) and RAFT (ptlflow, optional) flow backends.
- :mod:`~videomamba_depth.flow.consistency`: the forward–backward (occlusion) check.
- :mod:`~videomamba_depth.flow.rigid`: PnP-RANSAC relative pose from flow + teacher depth, rigid flow, static
  mask.
- :mod:`~videomamba_depth.flow.pipeline`: :class:`FlowConfig` and :func:`compute_flow_store`, the stage.
"""

from videomamba_depth.flow.backends import DISBackend, FlowBackend, RAFTBackend, import_ptlflow
from videomamba_depth.flow.consistency import forward_backward_consistency
from videomamba_depth.flow.pipeline import FlowConfig, compute_flow_store, flow_tasks, make_backend
from videomamba_depth.flow.rigid import PoseEstimate, estimate_relative_pose, rigid_flow, static_mask

__all__ = [
    "DISBackend",
    "FlowBackend",
    "FlowConfig",
    "PoseEstimate",
    "RAFTBackend",
    "compute_flow_store",
    "estimate_relative_pose",
    "flow_tasks",
    "forward_backward_consistency",
    "import_ptlflow",
    "make_backend",
    "rigid_flow",
    "static_mask",
]
