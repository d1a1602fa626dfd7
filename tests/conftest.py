"""Shared fixtures: paths of the repository and of the real data in ../shared (optional for users, mandatory in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
LGG_ROOT = SHARED / "data" / "lgg" / "kaggle_3m"
HIPPOCAMPUS_ROOT = SHARED / "data" / "hippocampus"
SCHEMA = SHARED / "reference" / "meta_schema_20240725.json"


def require_shared(path: Path) -> Path:
    """Return ``path``, or skip the test when it is absent (fail instead when XUNET_REQUIRE_SHARED_DATA=1, as in CI)."""
    if path.exists():
        return path
    reason = f"{path} is not available: these tests need the real data kept beside the checkout in ../shared"
    if os.environ.get("XUNET_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(reason + " (XUNET_REQUIRE_SHARED_DATA=1 makes it mandatory)")
    pytest.skip(reason)


@pytest.fixture
def lgg_root() -> Path:
    return require_shared(LGG_ROOT)


@pytest.fixture
def schema_path() -> Path:
    return require_shared(SCHEMA)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset in the prepared-LGG layout, shared by the tests of one session."""
    from xunet_bundle.demo import make_demo_dataset

    folder = tmp_path_factory.mktemp("demo")
    make_demo_dataset(folder, num_patients=10, size=48, num_slices=8, progress=False)
    return folder
