"""
Write a small deterministic synthetic dataset in the prepared-LGG layout (the bundle's default training data).

Usage::

    python scripts/make_demo_data.py --dst data/demo
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xunet_bundle.demo import make_demo_dataset  # noqa: E402


def main(dst: str = "data/demo", num_patients: int = 12, size: int = 64, num_slices: int = 16, seed: int = 0) -> None:
    """
    Args:
        dst: output folder.
        num_patients: number of synthetic patients.
        size: in-plane size of each volume (rows and columns).
        num_slices: number of slices of each volume.
        seed: seed; the same arguments give identical files.
    """
    datalist = make_demo_dataset(dst, num_patients=num_patients, size=size, num_slices=num_slices, seed=seed)
    print(f"wrote {len(datalist['training']) + len(datalist['testing'])} synthetic patients to {dst}")


if __name__ == "__main__":
    fire.Fire(main)
