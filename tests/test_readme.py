"""The README's commands and the guides', run as written.

Every ```bash and ```python block of README.md and of the guides in ``PAGES`` (docs/serving.md, …) is run in
order from the project root against the real server the README's first block starts (``./scripts/intgrads.sh
--demo``, port 8888): the curl and the old tool's loading snippet, the Python API, the JSON route, the scaling
calls, the engine snippet, the batch client and the picture. ``./scripts/test.sh`` is the command running this
test, so it is left to CI; the Ray Serve block (port 8898, docs/clusters.md) is run by
tests/serve/test_ray_frontend.py against the Ray cluster its first command starts, and the batch job's command
(``--batch``, docs/batch.md) by tests/batch/test_batch_local.py. The ```text block of usage forms (paths to the
user's own files) is checked against the launcher's argument parser, and the flags block against ``--help``.
The README's command that serves the documentation site is run and asked for its first page. The stop command
of the README ends the run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose command blocks run, in this order (the README's first block starts the server).
PAGES = (README, *(ROOT / "docs" / name for name in ("serving.md", "python-api.md", "client.md", "pictures.md",
                                                    "batch.md", "clusters.md")))
PORTS = (8888, 8889, 8890)
MADE = ("saved_file.gzip", "sentences.txt", "answers", "attribution.png", "answer.png", "kserve-layout")
STOP = "./scripts/intgrads.sh --stop"
RAY_PORT = "8898"   # the Ray Serve block's commands: run by tests/serve/test_ray_frontend.py
BATCH_FLAG = "--batch"   # the batch job's commands: run by tests/batch/test_batch_local.py


def ray_commands() -> list[str]:
    """The README's Ray Serve commands, in order."""
    return [command for language, text in readme_blocks() if language == "bash"
            for command in shell_commands(text) if RAY_PORT in command]


def batch_commands() -> list[str]:
    """The README's batch job commands: run by tests/batch/test_batch_local.py (each starts a Ray head of its own)."""
    return [command for language, text in readme_blocks() if language == "bash"
            for command in shell_commands(text) if BATCH_FLAG in command.split()]


def readme_blocks(pages=PAGES) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of ``pages``, in order."""
    return [block for page in pages
            for block in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)]


def shell_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def python_source(text: str) -> str:
    lines = text.splitlines()
    if any(line.startswith(">>>") for line in lines):
        return "\n".join(line[4:] if line.startswith(">>> ") else line[3:] for line in lines if line.startswith(">>>"))
    return text


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(command: list[str] | str, **kwargs) -> subprocess.CompletedProcess:
    shell = isinstance(command, str)
    result = subprocess.run(["bash", "-c", command] if shell else command, cwd=ROOT, capture_output=True,
                            text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def readme_server():
    if any(port_busy(port) for port in PORTS):
        pytest.skip("ports 8888-8890 are taken: the README's demo server cannot start here")
    clashes = [name for name in MADE if (ROOT / name).exists()]
    if clashes:
        pytest.skip(f"the README's commands would overwrite {', '.join(clashes)} in the project root")
    try:
        yield
    finally:
        subprocess.run(["bash", "-c", STOP], cwd=ROOT, capture_output=True, timeout=300)
        for name in MADE:
            path = ROOT / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def test_readme_commands_run_as_written(readme_server):
    assert STOP in README.read_text()
    outputs = []
    for language, text in readme_blocks():
        if language == "bash":
            for command in shell_commands(text):
                if command.startswith("./scripts/test.sh") or RAY_PORT in command or BATCH_FLAG in command.split():
                    continue  # this very suite, which CI runs; the Ray block and the batch job, run elsewhere
                outputs.append((command, run(command).stdout))
        elif language == "python":   # intgrads.demo_model() finds the demo the server built in model_store/
            outputs.append(("python", run([sys.executable, "-c", python_source(text)],
                                          env={**os.environ, "INTGRADS_CACHE": str(ROOT / "model_store")}).stdout))

    answer = torch.load(_gunzip(ROOT / "saved_file.gzip"), weights_only=True)
    assert answer["intermediate_gradients"].shape[0] == 50 and answer["tokens"][0] == "[CLS]"
    summary = next(json.loads(out) for command, out in outputs if "Accept: application/json" in command)
    assert summary["label"] == "negative" and summary["tokens"][1:5] == ["the", "food", "was", "awful"]
    workers = next(json.loads(out) for command, out in outputs
                   if command.startswith("curl --unix-socket") and command.split("#")[0].strip().endswith("/models/demo"))
    assert len(workers[0]["workers"]) == 3
    handed = next(json.loads(out) for command, out in outputs if "X-Intgrads-Handoff: file" in command)
    handed_file = Path(handed["file"])
    assert handed_file.parent == ROOT / "logs" / "serve-8888" / "handoff"
    assert handed_file.stat().st_size == handed["bytes"] and intgrads_answer(handed_file)["tokens"][1] == "the"
    index = [json.loads(line) for line in (ROOT / "answers" / "index.jsonl").read_text().splitlines()]
    assert [record["label"] for record in index] == ["positive", "negative"]
    assert (ROOT / "attribution.png").stat().st_size > 10_000 and (ROOT / "answer.png").stat().st_size > 10_000
    python_out = [out for command, out in outputs if command == "python"]
    assert "'intermediate_gradients'" in python_out[0] and python_out[1].startswith("Answer(")   # snippet, API
    assert (ROOT / "kserve-layout" / "model-store" / "demo.mar").is_file()
    run(STOP)
    assert not port_busy(8888)


def intgrads_answer(path: Path) -> dict:
    return torch.load(_gunzip(path), weights_only=True)


def _gunzip(path: Path):
    import gzip
    import io

    with gzip.open(path, "rb") as handle:
        return io.BytesIO(handle.read())


def test_readme_usage_forms_parse():
    from intgrads.launcher import build_parser

    forms = [text for language, text in readme_blocks() if language == "text"]
    assert forms
    for command in shell_commands("\n".join(forms)):
        words = shlex.split(command.split("  #")[0])
        assert words[0] == "./scripts/intgrads.sh"
        build_parser().parse_args(words[1:])


def test_readme_flags_match_help():
    help_text = subprocess.run([sys.executable, "-m", "intgrads.launcher", "--help"], cwd=ROOT, capture_output=True,
                               text=True, env={**os.environ, "COLUMNS": "110"}, timeout=120).stdout
    flags_block = next(text for language, text in readme_blocks() if text.startswith("usage: intgrads"))
    assert flags_block.strip() == help_text.strip()


def test_readme_serves_the_documentation_site(tmp_path):
    """The README's one command that serves the site (``mkdocs serve``), run from this environment's bin folder on
    a free port: it answers the home page of the built site."""
    import time
    import urllib.request

    (command,) = [line for language, text in readme_blocks((README,)) if language == "sh"
                  for line in shell_commands(text) if "mkdocs serve" in line]
    words = shlex.split(command)
    assert words[0] == ".venv/bin/mkdocs" and words[1:] == ["serve"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mkdocs = Path(sys.executable).parent / "mkdocs"
    process = subprocess.Popen([str(mkdocs), "serve", "-a", f"127.0.0.1:{port}", "--no-livereload"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    try:
        deadline, page = time.monotonic() + 120, None
        while page is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8")
            except OSError:
                time.sleep(0.3)
        assert page is not None, process.stdout.read() if process.poll() is not None else "no answer in 120 s"
        assert "<title>intgrads</title>" in page and "Integrated gradients" in page
    finally:
        process.terminate()
        process.wait(timeout=30)
