"""Per-frame metric depth teachers (UniDepthV2, or the synthetic stand-in) and the ``teacher`` stage."""

from videomamba_depth.teacher.base import Teacher, TeacherConfig, TeacherOutput, VideoContext
from videomamba_depth.teacher.run import (
    TEACHERS,
    TeacherOutputError,
    build_teacher,
    run_teacher,
    teacher_tasks,
)

__all__ = [
    "TEACHERS",
    "Teacher",
    "TeacherConfig",
    "TeacherOutput",
    "TeacherOutputError",
    "VideoContext",
    "build_teacher",
    "run_teacher",
    "teacher_tasks",
]
