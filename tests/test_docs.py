"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor, a page left out of the
nav, or a docstring the API reference cannot read fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_documentation_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("load_model", "attribute", "demo_model", "render_answer", "Client"):
        assert f'id="intgrads.' in reference and name in reference, name
    pages = {path.parent.name for path in (tmp_path / "site").glob("*/index.html")}
    assert {"serving", "python-api", "client", "batch", "clusters", "causal-lm", "models", "pictures", "security",
            "benchmarks", "reference"} <= pages
