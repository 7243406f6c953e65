"""Where the launcher finds its files and writes a run's: the project home, the handler, the default
TorchServe config, and a run directory's layout (:class:`RunPaths`). Also :class:`LaunchError`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent     # the intgrads package
SOURCE_ROOT = PACKAGE_DIR.parent
HANDLER_NAME = "intgrads_handler.py"


class LaunchError(Exception):
    """A failure with a message that says what to do; ``log_tail`` is printed after it."""

    def __init__(self, message: str, log_tail: str = "", code: int = 1):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail
        self.code = code


def program() -> str:
    """How to call this command again in the hints printed (scripts/intgrads.sh sets INTGRADS_PROG)."""
    return os.environ.get("INTGRADS_PROG") or "intgrads"


def project_home() -> Path:
    """Where model_store/ and logs/ live: $INTGRADS_HOME, the source checkout, or the current directory."""
    if os.environ.get("INTGRADS_HOME"):
        return Path(os.environ["INTGRADS_HOME"]).expanduser().resolve()
    if (SOURCE_ROOT / "setup.cfg").is_file() and (SOURCE_ROOT / "handler" / HANDLER_NAME).is_file():
        return SOURCE_ROOT
    return Path.cwd()


def _share_file(*parts) -> Path | None:
    for base in (SOURCE_ROOT, Path(sys.prefix) / "share" / "intgrads"):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def handler_file() -> Path:
    found = _share_file("handler", HANDLER_NAME)
    if found is None:
        raise LaunchError(f"the TorchServe handler ({HANDLER_NAME}) is missing: reinstall intgrads")
    return found


def default_config_properties() -> Path | None:
    return _share_file("config.properties")


@dataclass
class RunPaths:
    run_dir: Path

    @property
    def tmp(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.tmp / ".model_server.pid"

    @property
    def handoff(self) -> Path:
        return self.run_dir / "handoff"

    @property
    def private(self) -> Path:
        """Owner-only: the management API's Unix socket of a loopback server."""
        return self.run_dir / "private"

    @property
    def state(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.properties"

    @property
    def model_log(self) -> Path:
        return self.logs / "model_log.log"

    @property
    def ts_log(self) -> Path:
        return self.logs / "ts_log.log"

    @property
    def stdout(self) -> Path:
        return self.logs / "torchserve.out"


def run_paths(args, home: Path) -> RunPaths:
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else home / "logs" / f"serve-{args.port}"
    return RunPaths(run_dir.resolve())


