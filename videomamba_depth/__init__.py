"""VideoMambaDepth: temporally stable metric video depth from a streaming Mamba student."""

__version__ = "0.1.0"
