"""What a run shows: its progress bar on a terminal and its closing lines (``intgrads-client``'s and
``intgrads-batch``'s)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .index import INDEX_NAME


@dataclass
class RunReport:
    """What a run did."""

    output: Path
    total: int = 0          # sentences in the input
    answered: int = 0       # answered in this run
    skipped: int = 0        # already answered by an earlier run
    failed: int = 0         # failed in this run (recorded in the index with their error)
    warned: int = 0         # answered in this run with warnings (recorded in the index)
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)   # line -> error message, for this run's failures

    @property
    def index(self) -> Path:
        return self.output / INDEX_NAME

    def count(self, record: dict) -> None:
        """Count one new record of the index: answered (with or without warnings) or failed."""
        if record.get("error") is None:
            self.answered += 1
            warnings = record.get("warnings") or []   # a causal LM's: one list per target token
            self.warned += any(warnings) if record.get("kind") == "causal_lm" else bool(warnings)
        else:
            self.failed += 1
            self.errors[record["line"]] = record["error"]


def progress_bar(total: int, enabled: bool, desc: str = "intgrads"):
    """A tqdm bar of ``total`` sentences (done, rate, time left), or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" sentences", unit_scale=False, dynamic_ncols=True, smoothing=0.05, desc=desc)


def advance(bar, report: RunReport) -> None:
    """One more sentence on ``bar``, with the failures so far."""
    if bar is not None:
        bar.update(1)
        if report.failed:
            bar.set_postfix(failed=report.failed, refresh=False)


def print_report(program: str, report: RunReport, stream=None) -> None:
    """The closing lines: answered, already there, failed, seconds and the index; warnings; the first errors."""
    stream = stream or sys.stderr
    print(f"{program}: {report.answered} answered, {report.skipped} already there, {report.failed} failed "
          f"in {report.seconds:.1f} s; index: {report.index}", file=stream)
    if report.warned:
        print(f"{program}: {report.warned} answer(s) with warnings (their \"warnings\" in {report.index})", file=stream)
    for line, error in sorted(report.errors.items())[:5]:
        print(f"  line {line}: {error}", file=stream)
    if len(report.errors) > 5:
        print(f"  ... {len(report.errors) - 5} more in the index", file=stream)
