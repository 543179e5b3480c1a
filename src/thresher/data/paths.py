"""Where thresher keeps what it caches between runs (models, judge replies, oracle results)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$THRESHER_CACHE``, else ``~/.cache/thresher``; created on first use."""
    root = os.environ.get("THRESHER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "thresher")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
