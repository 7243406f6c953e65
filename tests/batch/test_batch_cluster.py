"""intgrads-batch on a running cluster of two Ray nodes (``--ray-address``): the workers on both nodes write the
same answer files and index records as intgrads-client, each answer the engine's, bit for bit; bad sentences are
recorded with the server's messages; a worker killed mid-run is replaced and every sentence answered once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

import intgrads
from intgrads.answer.summary import INDEX_KEYS
from intgrads.client import Client, read_index
from intgrads.client.cli import main as client_main

from .conftest import BATCH, ROOT, batch_env, write_lines

GOOD = ["A wonderful, moving film.", "The food was awful.", "the plot was dull and the ending felt rushed",
        "a charming story", "Nobody in the theatre laughed at the jokes; they were old and tired.",
        "the music was bright", "great", "It is one of the best pictures of the year, moving and beautifully shot."]
TOO_MANY_TOKENS = (     # 27 tokens
    "the film was slow at first but the music and the acting made every scene feel honest and warm, and the end was bright")
TOO_MANY_CHARS = "long " * 80
INVISIBLE = "\u200b\u200b"
CLIENT_KEYS = ["line", "sentence", "file", *INDEX_KEYS, "seconds", "attempts", "url", "options"]   # the client's order
OPTIONS = ["--n-steps", "200", "--baseline", "pad", "--max-tokens", "24"]
EXPECTED = {"n_steps": 200, "baseline": "pad", "max_tokens": 24}   # the engine's arguments for OPTIONS
COMPARED = ("integrated_gradients", "intermediate_gradients", "intermediates", "step_sizes", "logits",
            "token_attributions", "input_ids")


def test_two_nodes_bad_sentences_and_a_worker_killed_mid_run(two_nodes, oracle, tmp_path):
    """Workers on both nodes write the engine's answers, bit for bit (each sentence alone); bad sentences get the
    server's messages. The worker that answered first is killed with SIGKILL: Ray restarts it, its sentences are
    done again, and each sentence is answered once."""
    good = [f"{text} (review {i})" for i in range(2) for text in GOOD]
    lines = good[:3] + [INVISIBLE] + good[3:9] + [TOO_MANY_TOKENS] + good[9:] + [TOO_MANY_CHARS]
    source = write_lines(tmp_path / "in.txt", lines)
    output = tmp_path / "out"
    child = subprocess.Popen(BATCH + [*two_nodes.flags(), "--hf-model", hf_dir(oracle), str(source), "-o",
                                      str(output), *OPTIONS, "--max-chars", "300", "--no-truncate", "--workers", "2"],
                             cwd=ROOT, env=batch_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        victim, before, answered_then = kill_a_worker(two_nodes.folder, output)
        replaced = wait_for_replacement(two_nodes.folder, before, child) if victim else None
        _, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert victim and answered_then < len(lines), "the worker was not killed mid-run"
    assert replaced, "Ray did not restart the killed worker"
    assert child.returncode == 1, err[-3000:]   # some sentences failed
    assert f"{len(good)} answered, 0 already there, 3 failed" in err, err[-2000:]   # each sentence once
    records = read_index(output / "index.jsonl")
    assert sorted(records) == list(range(1, len(lines) + 1))
    failed = {line: (record["status"], record["error"]) for line, record in records.items() if record.get("error")}
    assert failed[4] == (400, "sequence has no visible character (only control, format or zero-width ones): send "
                              "the sentence to attribute")
    assert failed[11][0] == 413 and failed[11][1].startswith("the sentence has 27 tokens, more than the 24 this run "
                                                             "reads")
    assert failed[len(lines)] == (413, "sequence has 400 characters; this server takes at most 300")
    nodes = set()
    for line, record in records.items():
        if line not in failed:
            assert_the_engines(output, record, oracle(lines[line - 1], **EXPECTED), exact=True)
            nodes.add(record["node"])
    assert len(nodes) == 2   # workers on both nodes wrote answers
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [record["file"] for record in records.values() if record["file"]] + ["index.jsonl"])
    # intgrads-client's resume recognises the batch's answers: nothing is sent (no server listens there)
    todo = [(line, text) for line, text in enumerate(lines, 1) if line not in failed]
    report = Client("http://127.0.0.1:9/predictions/hf", retries=0).run(todo, output, n_steps=EXPECTED["n_steps"],
                                                                       baseline="pad", progress=False)
    assert (report.skipped, report.answered, report.failed) == (len(good), 0, 0)
    assert client_main(["render", str(output / "000001.gzip"), "-o", str(tmp_path / "first.html")]) == 0
    assert "wonderful" in (tmp_path / "first.html").read_text(encoding="utf-8")
    print(f"\n[batch] killed worker {victim} after {answered_then} of {len(lines)} sentences were indexed; Ray "
          f"restarted it as {replaced}; {len(good)} answered, once each")


def assert_the_engines(output: Path, record: dict, expected: dict, *, exact: bool):
    """The record and answer file of one sentence against the engine's answer: bit for bit, or to 1e-5."""
    assert list(record)[:len(CLIENT_KEYS)] == CLIENT_KEYS
    answer = intgrads.load_answer(output / record["file"])
    for key in COMPARED:
        if exact or answer[key].dtype == torch.int64:
            assert torch.equal(answer[key], expected[key]), (record["line"], key)
        else:
            assert torch.allclose(answer[key], expected[key], rtol=1e-4, atol=1e-5), (record["line"], key)
    assert record["predicted"] == int(expected["logits"].argmax()) and record["n_steps"] == expected["n_steps"]


def kill_a_worker(folder: Path, output: Path) -> tuple[int | None, set, int]:
    """SIGKILL the Ray Data worker of the node that answered first (the other node's worker goes on); returns its
    pid, the workers there were then and how many sentences were indexed then."""
    deadline = time.time() + 120
    while time.time() < deadline:
        records = read_index(output / "index.jsonl")
        answered = [record["node"] for record in records.values() if record.get("file")]
        if answered:
            node = next(node for node in ("head", "n2") if node_id(folder / node) == answered[0])
            victims = map_workers(folder, on=folder / node)
            if victims:
                workers = set(map_workers(folder))
                os.kill(victims[0], signal.SIGKILL)
                return victims[0], workers, len(records)
        time.sleep(0.05)
    return None, set(), 0


def wait_for_replacement(folder: Path, before: set, child) -> int | None:
    """The pid of a worker Ray starts, on either node, in place of the killed one (while the run lasts)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        fresh = [pid for pid in map_workers(folder) if pid not in before]
        if fresh:
            return fresh[0]
        if child.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def node_id(node_folder: Path) -> str:
    """The Ray node id of the node whose temp dir is ``node_folder`` (its session files are named with it)."""
    found = sorted(node_folder.glob("session_*/metrics_export_port_*"))
    return found[0].name.rsplit("_", 1)[1] if found else ""


def map_workers(folder: Path, on: Path | None = None) -> list[int]:
    """The pids of the batch's Ray Data workers (actors) of the cluster kept in ``folder``; ``on``: only those of
    the node whose temp dir that is (their parent, the node's raylet, names it in its options)."""
    from intgrads.launcher.ray_cluster import cluster_processes

    found = []
    for pid in cluster_processes(folder):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = Path(f"/proc/{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[1]}/cmdline")
            raylet = parent.read_bytes() if on is not None else b""
        except (OSError, IndexError):
            continue
        if command.startswith(b"ray::MapWorker") and b"AnswerWriter" in command and (
                on is None or f"{on}/".encode() in raylet):
            found.append(pid)
    return sorted(found)


def hf_dir(oracle) -> str:
    return str(oracle.bundle.source)

