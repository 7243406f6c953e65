"""intgrads-batch with a Ray head of its own (the default): the README's command runs as written and leaves no Ray
process; Ctrl-C (SIGINT) and SIGKILL of the driver leave only whole answer files and no Ray process (SIGKILL: the
watchdog stops the head), and a rerun computes only what is missing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import torch

import intgrads
from intgrads.client import read_index
from intgrads.launcher.ray_cluster import cluster_processes
from test_readme import batch_commands

from .conftest import BATCH, ROOT, batch_env, run_batch, write_lines
from .test_batch_cluster import assert_the_engines

SLOW = ["--n-steps", "200", "--workers", "2"]   # slow enough to be stopped midway


def own_folder(tmp: Path) -> Path | None:
    found = sorted(tmp.glob("intgrads-batch-*"))
    return found[0] if found else None


def wait_for(predicate, seconds: float, step: float = 0.1):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def start_slow_run(hf_files, tmp: Path, count: int = 10, extra=()) -> tuple[subprocess.Popen, Path, Path, list[str]]:
    """A run on this machine's own head, slow enough to be stopped midway; SIGINT as a terminal would send it
    (reset to the default: a shell running the tests in the background ignores it)."""
    lines = [f"review {i}: the plot was fine but the music was dull and the ending felt rushed" for i in range(count)]
    source = write_lines(tmp / "in.txt", lines)
    output = tmp / "out"
    child = subprocess.Popen(BATCH + ["--hf-model", str(hf_files.weights), str(source), "-o", str(output), *SLOW,
                                      *extra],
                             cwd=ROOT, env=batch_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return child, source, output, lines


def assert_whole(output: Path):
    """Only whole answer files (each loads), the index, and nothing else: no temporaries, no lock."""
    names = sorted(path.name for path in output.iterdir())
    assert all(re.fullmatch(r"\d{6}\.gzip|index\.jsonl", name) for name in names), names
    for path in output.glob("*.gzip"):
        intgrads.load_answer(path)


def test_the_readme_command_runs_and_leaves_no_ray_process(short_tmp):
    commands = batch_commands()
    assert commands == ["./scripts/intgrads.sh --batch --demo sentences.txt -o batch_answers/ --n-steps 20"]
    tmp = short_tmp
    write_lines(tmp / "sentences.txt", ["A wonderful, moving film.", "The food was awful."])
    command = commands[0].replace("./scripts/intgrads.sh", str(ROOT / "scripts" / "intgrads.sh"))
    result = subprocess.run(["bash", "-c", command], cwd=tmp, env=batch_env(tmp), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 answered, 0 already there, 0 failed" in result.stderr
    folder = Path(re.search(r"its files in (\S+)\)", result.stderr).group(1))
    assert not folder.exists() and cluster_processes(folder) == {}
    records = read_index(tmp / "batch_answers" / "index.jsonl")
    assert [records[line]["label"] for line in (1, 2)] == ["positive", "negative"]
    answer = intgrads.load_answer(tmp / "batch_answers" / "000002.gzip")
    assert answer["tokens"][1:5] == ["the", "food", "was", "awful"] and answer["n_steps"] == 20


def test_ctrl_c_leaves_whole_files_and_no_ray_process(hf_files, short_tmp):
    """Ctrl-C: exit 130, only whole answer files (here float16, three keys) and the index, no Ray process."""
    tmp = short_tmp
    child, _, output, lines = start_slow_run(hf_files, tmp, extra=["--dtype", "float16", "--outputs",
                                                                     "integrated_gradients,tokens,logits"])
    try:
        assert wait_for(lambda: len(list(output.glob("*.gzip"))) >= 2, 120), child.stderr.read()
        folder = own_folder(tmp)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130 and "interrupted" in err, err[-2000:]
    assert not folder.exists() and cluster_processes(folder) == {}
    assert_whole(output)
    records = read_index(output / "index.jsonl")
    assert len(records) < len(lines)
    assert all(record["options"] == {"n_steps": 200, "dtype": "float16",
                                     "outputs": ["integrated_gradients", "tokens", "logits"]} for record in records.values())
    answer = intgrads.load_answer(next(output.glob("*.gzip")))
    assert answer["integrated_gradients"].dtype == torch.float16 and "intermediate_gradients" not in answer


def test_sigkill_of_the_driver_the_watchdog_stops_the_head_and_a_rerun_does_the_rest(hf_files, two_nodes, oracle,
                                                                                     short_tmp):
    """SIGKILL of the driver: the watchdog stops the run's head. The rerun (on the two-node cluster, sentences run
    together three at a time, in blocks a streaming repartition cuts) takes the whole files in and computes only
    the rest, each equal to the engine's to 1e-5."""
    tmp = short_tmp
    child, source, output, lines = start_slow_run(hf_files, tmp)
    try:
        assert wait_for(lambda: len(list(output.glob("*.gzip"))) >= 2, 120), child.stderr.read()
        folder = own_folder(tmp)
        owner = json.loads((folder / "owner.json").read_text())
        child.kill()   # SIGKILL: no cleanup in the driver
        child.wait(timeout=30)
    finally:
        child.kill()
    assert wait_for(lambda: not folder.exists() and not _alive(owner["watchdog"]), 60), "the watchdog did not stop the head"
    assert cluster_processes(folder) == {} and not _alive(owner["driver"])
    assert_whole(output)
    files = sorted(path.name for path in output.glob("*.gzip"))
    indexed = len(read_index(output / "index.jsonl"))
    rerun = run_batch([*two_nodes.flags(), "--hf-model", hf_files.weights, source, "-o", output, *SLOW,
                       "--batch-size", "3"], env={**batch_env(tmp), "INTGRADS_BATCH_DIRECT_BLOCKS": "0"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(lines) - len(files)} answered, {len(files)} already there, 0 failed" in rerun.stderr
    if len(files) > indexed:
        assert f"{len(files) - indexed} answer file(s) of an interrupted run taken into the index" in rerun.stderr
    records = read_index(output / "index.jsonl")
    assert sorted(records) == list(range(1, len(lines) + 1))
    for line, record in records.items():
        if record["file"] not in files:   # computed by the rerun, together
            assert_the_engines(output, record, oracle(lines[line - 1], n_steps=200), exact=False)
    print(f"\n[batch] SIGKILL after {len(files)} answer files ({indexed} indexed); the rerun answered "
          f"{len(lines) - len(files)}, took {len(files) - indexed} in")


def _alive(pid: int) -> bool:
    from intgrads.system import pid_alive

    return pid_alive(pid)

