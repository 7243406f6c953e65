"""scripts/gpu_check.py, the GPU box's end-to-end check, run here on the CPU with small shapes: it starts the
server through the launcher with two models, compares the README curl's answer with the engine's, scales the
workers up and down and replaces a worker killed with SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    short = Path(tempfile.mkdtemp(prefix="igc-", dir="/tmp"))   # worker socket paths must stay short
    env = dict(os.environ, TMPDIR=str(short))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--small",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["ok"] for row in rows] == [True] * 5
    assert [row["step"].split(":")[0] for row in rows[1:3]] == ["bert", "xlnet-base"]
