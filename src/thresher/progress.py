"""Progress bars for every long step (tqdm; quiet when THRESHER_PROGRESS=0 or not wanted)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager


def progress_enabled() -> bool:
    return os.environ.get("THRESHER_PROGRESS", "1") not in ("0", "false", "no")


@contextmanager
def progress(total: int | None, desc: str, disable: bool = False, unit: str = "it"):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=disable or not progress_enabled(), unit=unit,
               file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()
