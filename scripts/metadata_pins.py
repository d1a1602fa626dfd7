"""
Print the package versions ``configs/metadata.json`` pins, one pip requirement a line: the versions the Model Zoo's
CI installs, which ``scripts/setup_env.sh`` installs too (as constraints), so that the bundle is tested with them.

Usage::

    python scripts/metadata_pins.py > constraints.txt
"""

from __future__ import annotations

import json
from pathlib import Path

METADATA = Path(__file__).resolve().parents[1] / "configs" / "metadata.json"


def metadata_pins(metadata: str | Path = METADATA) -> list[str]:
    """
    Args:
        metadata: the bundle's ``metadata.json``.

    Returns:
        ``["monai==...", "torch==...", "numpy==...", <required and optional packages>]``.
    """
    meta = json.loads(Path(metadata).read_text())
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pins.update(meta.get("required_packages_version", {}))
    pins.update(meta.get("optional_packages_version", {}))
    return [f"{package}=={version}" for package, version in pins.items()]


if __name__ == "__main__":
    print("\n".join(metadata_pins()))
