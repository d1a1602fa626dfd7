"""
Print one JSON line that says where this process runs: the time (UTC), platform, cores, PyTorch and its accelerator.

``benchmarks/run.sh`` appends it to a run's ``machines.log`` at the start of every sitting, so that the record of a run
spread over machines (a GPU, then a CPU) says where each sitting trained.

Usage::

    python benchmarks/tools/describe_machine.py >> runs/lgg/xunet_seed0/machines.log
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone

import torch


def describe_machine() -> dict:
    """This machine's platform, logical cores, PyTorch version, PyTorch's CPU threads and its first CUDA device."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


if __name__ == "__main__":
    print(json.dumps({"started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **describe_machine()}))
