"""Synthetic RGB-D videos with exact ground truth: ray-cast textured rooms, hand-held camera, moving objects.

``sample_scene(config, seed)`` draws a scene, ``render_frames(scene)`` streams its frames (RGB + depth,
pose, K, forward flow, motion mask), and ``write_synth_video`` writes one video directory for the ``synth``
stage (``video.mp4``, ``intrinsics.json``, ``gt.zarr.zip``). ``synth.images`` (imported on its own, not from
here, so the video stage does not depend on it) writes the single-frame image set (``synth_images`` stage).
"""

from videomamba_depth.synth.export import synth_tasks, write_synth_video
from videomamba_depth.synth.render import Frame, render_frames
from videomamba_depth.synth.scene import Scene, SynthConfig, sample_scene

__all__ = [
    "Frame", "Scene", "SynthConfig", "render_frames", "sample_scene", "synth_tasks", "write_synth_video",
]
