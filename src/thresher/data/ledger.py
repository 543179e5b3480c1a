"""The cost ledger: every oracle run, proxy call and test scoring, with what it cost."""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("oracle", "proxy", "test", "signal", "judge")


@dataclass
class LedgerEntry:
    kind: str
    label: str
    runs: int = 1
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    key: str = ""
    extra: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class CostLedger:
    """Append-only record of costs; optionally mirrored to a JSONL file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.entries: list[LedgerEntry] = []
        self._lock = threading.Lock()
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self.entries.append(LedgerEntry(**json.loads(line)))

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        if entry.kind not in KINDS:
            raise ValueError(f"unknown ledger kind {entry.kind!r}")
        with self._lock:
            self.entries.append(entry)
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps(asdict(entry)) + "\n")
        return entry

    def summary(self, since: int = 0) -> dict:
        """Totals per kind over entries[since:]; cached entries count as calls but cost nothing new."""
        out: dict[str, dict] = {}
        for e in self.entries[since:]:
            s = out.setdefault(e.kind, {"calls": 0, "runs": 0, "cached": 0, "examples": 0, "tokens": 0, "seconds": 0.0})
            s["calls"] += 1
            if e.cached:
                s["cached"] += 1
                continue
            s["runs"] += e.runs
            s["examples"] += e.examples
            s["tokens"] += e.tokens
            s["seconds"] += e.seconds
        return out

    def mark(self) -> int:
        return len(self.entries)

    def count(self, kind: str, since: int = 0, include_cached: bool = True) -> int:
        return sum(1 for e in self.entries[since:] if e.kind == kind and (include_cached or not e.cached))
