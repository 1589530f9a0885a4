"""The real default: SmolLM2-135M-Instruct (``smollm2``) and the project's real tasks."""

from .smollm2 import GGUF_SHA256, INSTALL, load, smollm2_checkpoint, smollm2_gguf
from .tasks import DATA_DIR, real_task, real_task_names

__all__ = [
    "DATA_DIR",
    "real_task",
    "real_task_names",
    "GGUF_SHA256",
    "INSTALL",
    "load",
    "smollm2_checkpoint",
    "smollm2_gguf",
]
