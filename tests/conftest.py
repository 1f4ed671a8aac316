"""Shared pytest fixtures: where the project and the real sample data are."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real samples live beside the checkout (../shared/data/real) and are absent on a user's machine.
REAL = ROOT.parent / "shared" / "data" / "real"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real sample data not found at {REAL} (only present in the development workspace)")
    return REAL
