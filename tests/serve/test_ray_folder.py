"""Where a Ray cluster of ours keeps its sockets: every socket path Ray will make under it fits a Unix socket
address (107 bytes), whatever the run directory's or the temp folder's length.

The oracle is the installed Ray itself: its session name format (``ray/_private/node.py``) and the names of its
dashboard modules, each of which listens on ``SESSION/sockets/dash_<name>``."""

from __future__ import annotations

import datetime
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from intgrads.batch import cluster
from intgrads.launcher import ray_cluster
from intgrads.launcher.paths import RunPaths
from intgrads.launcher.start_ray import ray_folder

ray = pytest.importorskip("ray")
RAY_ROOT = Path(ray.__file__).parent


def longest_socket_suffix(dashboard: bool = True) -> int:
    """The longest path Ray adds to its folder for a socket, with the largest pid Linux allows."""
    node = (RAY_ROOT / "_private" / "node.py").read_text()
    assert 'f"session_{date_str}_{os.getpid()}"' in node and '"%Y-%m-%d_%H-%M-%S_%f"' in node
    date = datetime.datetime(2026, 12, 31, 23, 59, 59, 999999).strftime("%Y-%m-%d_%H-%M-%S_%f")
    largest_pid = max(4194304, int(Path("/proc/sys/kernel/pid_max").read_text()))
    session = f"session_{date}_{largest_pid}"
    modules = set()
    for source in (RAY_ROOT / "dashboard").rglob("*.py"):
        modules.update(re.findall(r"^class (\w+)\(SubprocessModule\)", source.read_text(), re.MULTILINE))
    assert {"MetricsHead", "ServeHead", "JobHead"} <= modules
    names = ["raylet", "plasma_store", *(f"dash_{name}" for name in modules if dashboard)]
    return max(len(f"/{session}/sockets/{name}") for name in names)


def test_the_socket_allowance_is_rays_own():
    assert ray_cluster.RAY_SOCKET_SUFFIX >= longest_socket_suffix()
    assert ray_cluster.MAX_RAY_FOLDER + longest_socket_suffix() <= 107
    assert ray_cluster.RAY_SOCKET_SUFFIX_NO_DASHBOARD >= longest_socket_suffix(dashboard=False)


@pytest.mark.parametrize("depth", [1, 20, 30, 40, 60, 120])
def test_a_run_directory_of_any_length_gets_a_folder_rays_sockets_fit(tmp_path, monkeypatch, depth):
    monkeypatch.setenv("TMPDIR", str(tmp_path / ("t" * depth)))
    monkeypatch.setattr(tempfile, "tempdir", None)   # gettempdir() reads TMPDIR again
    (tmp_path / ("t" * depth)).mkdir()
    run_dir = Path("/" + "r" * depth)
    folder = ray_folder(RunPaths(run_dir))
    try:
        assert len(os.fsencode(folder)) + longest_socket_suffix() <= 107, folder
        if folder != run_dir / "ray" / "r":   # inside a folder of its own, private (start_head makes RUN/ray so)
            assert folder.parent.is_dir() and folder.parent.stat().st_mode & 0o777 == 0o700
    finally:
        if folder != run_dir / "ray" / "r":
            folder.parent.rmdir()


def test_a_short_temp_folder_holds_the_fallback_folder(monkeypatch):
    short = Path("/tmp") / secrets.token_hex(3)   # /tmp/XXXXXX: room for intgrads-ray-XXXXXXXX/r
    short.mkdir(mode=0o700)
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        monkeypatch.setattr(tempfile, "tempdir", None)
        folder = ray_folder(RunPaths(Path("/" + "r" * 60)))
        assert folder.parent.parent == short and len(os.fsencode(folder)) + longest_socket_suffix() <= 107
    finally:
        shutil.rmtree(short)


@pytest.mark.parametrize("extra", [0, 1])
def test_the_batch_jobs_folders_fit_too(monkeypatch, extra):
    """The batch job's head runs without a dashboard (cluster.HEAD_ARGS): a temp folder of MAX_BASE bytes is
    used, one byte more is not."""
    assert "--include-dashboard=false" in cluster.HEAD_ARGS
    name_bytes = cluster.MAX_BASE + extra - len("/tmp/") - 8
    base = Path(tempfile.mkdtemp(prefix="b" * name_bytes, dir="/tmp"))
    try:
        assert len(os.fsencode(base)) == cluster.MAX_BASE + extra
        monkeypatch.setenv("TMPDIR", str(base))
        monkeypatch.setattr(tempfile, "tempdir", None)
        chosen = cluster._base()
        assert chosen == (base if extra == 0 else Path("/tmp"))
        assert len(os.fsencode(chosen / f"{cluster.PREFIX}XXXXXXXX" / "ray")) + longest_socket_suffix(False) <= 107
        if extra == 0:   # the limit is tight: one byte more would not fit
            assert len(os.fsencode(base)) + 1 + len(f"/{cluster.PREFIX}XXXXXXXX/ray") + longest_socket_suffix(False) > 107
    finally:
        shutil.rmtree(base)
