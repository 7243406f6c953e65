"""``python -m intgrads.batch.watchdog FOLDER OUTPUT DRIVER_PID``: a batch run's own Ray cluster outlives no driver.

Started by the driver in a session of its own, it reads its standard input, a pipe whose write end only the
driver holds, until the end: the driver closed it after stopping the cluster itself, or died (SIGKILL included),
and the kernel closed it. It then stops whatever is left of the cluster kept in ``FOLDER/ray`` (only its
processes), removes the temporaries the killed workers left in ``OUTPUT`` and the driver's lock there, unless
another run holds it by then, and removes ``FOLDER``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path


def clean_output(output: Path, driver: int) -> None:
    """The killed run's temporaries and lock, when the lock is still the dead driver's (no new run took over)."""
    from ..client.index import LOCK_NAME, remove_own_temporaries
    from ..system import pid_alive

    lock = output / LOCK_NAME
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("pid") == driver and not pid_alive(driver):
        remove_own_temporaries(output)
        lock.unlink(missing_ok=True)


def main(argv=None) -> int:
    folder, output, driver = (argv if argv is not None else sys.argv[1:])[:3]
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    from ..launcher.ray_cluster import stop_cluster

    folder = Path(folder)
    if folder.is_dir():
        stop_cluster(folder / "ray", grace=5)
        clean_output(Path(output), int(driver))
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
