"""The package's rooms keep their boundaries (docs/architecture.md): arrows point toward the engine only.

- A notebook's call path (``import intgrads``, ``load_model``, ``attribute``, ``encode_answer``) loads nothing of
  serving, the launcher, the client, the pictures, TorchServe (``ts``), ``requests`` or ``urllib3``.
- Read from the source: the engine imports no other room; the answer format only the engine; serving only
  the answer format and the engine; the handler and the client no launcher module.
- The archive carries the engine, the answer format and serving, not the launcher or the client.
- No module over 500 lines, no function over 60.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "intgrads"
HANDLER = ROOT / "handler" / "intgrads_handler.py"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

FORBIDDEN_FOR_ENGINE_USERS = ("intgrads.serving", "intgrads.launcher", "intgrads.client", "intgrads.pictures",
                              "intgrads.render", "intgrads.rayserve", "intgrads.batch", "ts", "ray", "requests",
                              "urllib3", "matplotlib")


def test_engine_call_path_loads_no_server_launcher_or_client(bert_files):
    code = f"""
import json, sys
import intgrads
bundle = intgrads.load_model("bert", {str(bert_files.weights)!r}, config={str(bert_files.config)!r},
                             tokenizer={str(bert_files.tokenizer)!r})
answer = intgrads.attribute(bundle, "a wonderful film", target=1, n_steps=4)
payload = intgrads.encode_answer(answer)
again = intgrads.decode_answer(payload)
summary = intgrads.summarize_answer(again)
print(json.dumps({{"modules": sorted(sys.modules), "tokens": summary["tokens"]}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tokens"][:2] == ["[CLS]", "a"]   # the call path really ran
    loaded = [name for name in report["modules"]
              if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_FOR_ENGINE_USERS)]
    assert loaded == []


def test_the_ray_front_routes_without_torch():
    """The Ray front's replica (routes, key checks, bodies, replies) imports no torch and no transformers: it
    holds no model library and starts in about a second."""
    pytest.importorskip("ray")
    code = "import json, sys; import intgrads.rayserve.front; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert "intgrads.rayserve.http" in modules
    assert [name for name in modules if name.split(".")[0] in ("torch", "transformers")] == []


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (at any depth in the file, relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if path.is_relative_to(PACKAGE):
        parts = ("intgrads",) + path.relative_to(PACKAGE).with_suffix("").parts
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    else:
        package = ()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
                if node.module is None:   # from . import x
                    names.update(f"{module}.{alias.name}" for alias in node.names)
                    continue
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _room_files(room: str) -> list[Path]:
    target = PACKAGE / room
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def _intgrads_rooms(names: set[str]) -> set[str]:
    """The rooms (``intgrads.X``) among imported names; names of modules that do not exist are skipped."""
    rooms = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "intgrads" and len(parts) > 1:
            if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room, allowed", [
    ("engine", {"engine"}),
    ("answer", {"answer", "engine"}),
    ("serving", {"serving", "answer", "engine"}),
    ("system", set()),
    ("pictures", {"pictures", "engine", "answer"}),
    ("client", {"client", "answer", "engine", "pictures", "system"}),
    ("rayserve", {"rayserve", "serving", "system"}),   # a front end: glue over the service
    ("launcher", {"launcher", "engine", "system"}),    # writes the Ray config by name: imports neither front end
    # the batch job: the launcher's model flags and Ray head, the client's input and output, the service
    ("batch", {"batch", "launcher", "client", "serving", "answer", "engine", "system"}),
])
def test_rooms_import_only_toward_the_engine(room, allowed):
    for path in _room_files(room):
        rooms = _intgrads_rooms(_imports(path)) - allowed
        assert not rooms, f"{path.relative_to(ROOT)} imports intgrads.{', intgrads.'.join(sorted(rooms))}"


@pytest.mark.parametrize("room", ["engine", "answer", "serving", "system"])
def test_engine_answer_and_serving_import_no_server_or_http_client(room):
    for path in _room_files(room):
        top = {name.split(".")[0] for name in _imports(path)}
        assert not top & {"ts", "ray", "starlette", "requests", "urllib3", "matplotlib"}, path


def test_handler_and_client_import_no_launcher_module():
    for path in [HANDLER, *_room_files("client")]:
        assert "launcher" not in _intgrads_rooms(_imports(path)), path
    assert _intgrads_rooms(_imports(HANDLER)) <= {"serving", "system"}   # glue over the service


def test_no_room_imports_the_batch_job():
    for path in _sources():
        if not path.is_relative_to(PACKAGE / "batch"):
            assert "batch" not in _intgrads_rooms(_imports(path)), path


def test_the_archive_carries_engine_answer_and_serving_only(tmp_path):
    from intgrads.launcher.archive import ARCHIVED_PARTS, _link_code

    parts = _link_code(tmp_path / "intgrads")
    assert sorted(path.name for path in (tmp_path / "intgrads").iterdir()) == sorted(ARCHIVED_PARTS)
    assert {path.name for path in parts} == {"__init__.py", "system.py", "engine", "answer", "serving"}
    # what the handler imports is all there
    for name in _imports(HANDLER):
        if name.startswith("intgrads."):
            room = name.split(".")[1]
            assert room in ARCHIVED_PARTS or f"{room}.py" in ARCHIVED_PARTS, name


def _sources():
    return sorted(PACKAGE.rglob("*.py")) + [HANDLER]


def test_no_module_over_500_lines_and_no_function_over_60():
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}: {node.name} has {length} lines")
    assert too_long == []


def test_product_files_name_no_issue_numbers():
    import re

    pattern = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    files = [*_sources(), *sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted((ROOT / "tests").rglob("*.py")),
             *sorted((ROOT / "scripts").glob("*"))]
    hits = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files if path.is_file()
            for match in pattern.finditer(path.read_text(encoding="utf-8", errors="replace"))]
    assert hits == []
