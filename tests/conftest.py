"""Shared pytest fixtures: where the project and the real sample data are.

- `real_data`: the real TCIA samples that ship with the repository (`tests/data/real`, CC BY 3.0, see its
  README.md): `lidc/LIDC-IDRI-0001/` (a CT slice and its XML), `lidc/xml/` (19 real XML files),
  `lidc/pylidc_reference.json` (pylidc's masks for those XML files) and `ct-series-unsorted/`.
  Always present: tests that use it never skip.
- `real_lidc`: `real_data / "lidc"`; `pylidc_reference`: the parsed `lidc/pylidc_reference.json`.
- `real_brats`: the BraTS samples, which may not be redistributed: they live beside the checkout
  (`../shared/data/real/brats`, the development workspace and CI) and the tests that use them skip elsewhere.
"""
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"                             # in the repository
SHARED_BRATS = ROOT.parent / "shared" / "data" / "real" / "brats"   # beside the checkout, when present

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def real_data() -> Path:
    assert (REAL / "lidc" / "LIDC-IDRI-0001" / "000001.dcm").is_file(), f"{REAL}: the repository's real samples are missing"
    return REAL


@pytest.fixture(scope="session")
def real_lidc(real_data) -> Path:
    return real_data / "lidc"


@pytest.fixture(scope="session")
def pylidc_reference(real_lidc) -> dict:
    return json.loads((real_lidc / "pylidc_reference.json").read_text())


@pytest.fixture(scope="session")
def real_brats() -> Path:
    if not SHARED_BRATS.is_dir():
        pytest.skip(f"real BraTS samples not found at {SHARED_BRATS} (they may not be redistributed; "
                    "present only in the development workspace and CI)")
    return SHARED_BRATS
