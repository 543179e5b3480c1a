"""Shared test fixtures.

The real data files (Alpaca, ShareGPT, GSM8K) live outside the repository, in the
``shared/data`` folder beside the checkout, or wherever ``$THRESHER_SHARED_DATA``
points. Tests read them in place and never copy them into the repository.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test the checkout's sources even when the package is not installed into the venv.
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def shared_data_path() -> Path:
    """``$THRESHER_SHARED_DATA``, else ``<checkout>/../shared/data``."""
    env = os.environ.get("THRESHER_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(
            f"shared data folder not found at {path}: set THRESHER_SHARED_DATA to the folder "
            "holding alpaca/, sharegpt/ and gsm8k/ to run the real-data tests"
        )
    return path
