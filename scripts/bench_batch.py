#!/usr/bin/env python3
"""intgrads-batch against the in-process loop and against intgrads-client on a TorchServe server (CPU).

The model and the sentences are the answer-path benchmark's (``scripts/bench_answer_path.py``): the stand-in, a
seeded BERT with hidden size 1024 and no encoder layers, N different sentences of T tokens, 50 steps. Three ways,
run back to back for each length (the machine is shared: rerun with ``--repeat`` and read the spread):

- **in process**: ``attribute`` + ``encode_answer`` + the file written and fsynced, one sentence after another,
  with every core's torch threads (the answer-path benchmark's loop; the model loaded and warm), measured before
  and after the other two, and averaged;
- **batch**: ``intgrads-batch --hf-model STAND-IN FILE -o DIR`` with its defaults (a Ray head of its own, one
  worker per core, one thread each: the same total threads);
- **client**: the launcher's defaults (TorchServe, two workers of one thread), warm, then ``intgrads-client FILE -o
  DIR --url URL`` with its defaults.

Sentences/s are given two ways: **steady**, the rate at which answer files were written (``(N - W) / (last - first
file time)`` for W parallel workers; the in-process loop: N / its wall), and **end to end**, N / the command's wall
(for the batch that includes starting Ray and loading the model; for the client, its own start, the server warm).
The goals: batch steady >= 0.9 x in process, and batch > client.

    .venv/bin/python scripts/bench_batch.py --tokens 64 256 --count 64 24 --json batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_answer_path as answer_path  # noqa: E402
from bench_common import free_port, machine  # noqa: E402


def file_rate(folder: Path, workers: int) -> float:
    """Answers per second while they were being written: (N - W) / (last - first file time)."""
    times = sorted(path.stat().st_mtime for path in folder.glob("*.gzip"))
    span = times[-1] - times[0]
    return (len(times) - workers) / span if span > 0 and len(times) > workers else float("nan")


def timed(command: list, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - started


def batch_run(model: dict, texts: list[str], work: Path, env: dict) -> dict:
    """intgrads-batch with its defaults on ``texts``: its wall and the rate of its answer files."""
    from intgrads.launcher.cli import default_cpu_workers
    from intgrads.system import usable_cores

    source, out = work / "batch.txt", work / "batch-out"
    source.write_text("\n".join(texts) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    wall = timed([sys.executable, "-m", "intgrads.batch", *model["flags"], str(source), "-o", str(out),
                  "--no-progress", "--model-store", str(work / "store")], env)
    workers = default_cpu_workers(usable_cores())
    result = {"wall": wall, "steady_per_s": file_rate(out, workers), "workers": workers}
    shutil.rmtree(out, ignore_errors=True)
    return result


def start_server(model: dict, work: Path, env: dict) -> tuple[list, int]:
    """The launcher's defaults (TorchServe) on this model: (the client command for it, its workers)."""
    port = free_port()
    launcher = [sys.executable, "-m", "intgrads.launcher", "-p", str(port), "--run-dir", str(work / "run"),
                "--model-store", str(work / "store")]
    timed(launcher + model["flags"], env)
    workers = len(json.loads((work / "run" / "state.json").read_text())["worker_pids"])
    return [sys.executable, "-m", "intgrads.client", "--url", f"http://127.0.0.1:{port}/predictions/{model['name']}",
            "--no-progress"], workers


def client_run(client: list, workers: int, texts: list[str], work: Path, env: dict) -> dict:
    """intgrads-client on ``texts`` after a warm-up: its wall and the rate of its answer files."""
    (work / "warm.txt").write_text("\n".join(texts[:2 * workers]) + "\n")
    (work / "client.txt").write_text("\n".join(texts) + "\n")
    for folder in ("warm-out", "client-out"):
        shutil.rmtree(work / folder, ignore_errors=True)
    timed(client + [str(work / "warm.txt"), "-o", str(work / "warm-out")], env)
    wall = timed(client + [str(work / "client.txt"), "-o", str(work / "client-out")], env)
    return {"wall": wall, "steady_per_s": file_rate(work / "client-out", workers), "workers": workers}


def measure(tokens_list, counts) -> list[dict]:
    """For each length, back to back: in process, intgrads-batch, intgrads-client, in process again (the in-process
    figure is the mean of the two, which brackets the machine's drift)."""
    from transformers import AutoTokenizer

    from intgrads.launcher import DEFAULT_CHUNK_TOKENS

    work = Path(tempfile.mkdtemp(prefix="intgrads-bench-batch-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")   # the run's own Ray head: a short folder (intgrads.batch.cluster)
    env.pop("INTGRADS_TORCH_THREADS", None)
    model = answer_path.make_model("stand-in", work)
    tokenizer = AutoTokenizer.from_pretrained(str(model["weights"]))
    print("[batch] starting the launcher's defaults (TorchServe) for intgrads-client", flush=True)
    client, workers = start_server(model, work, env)
    rows = []
    try:
        for tokens, count in zip(tokens_list, counts):
            texts = answer_path.sentences(tokenizer, count, tokens)
            print(f"[batch] {count} sentences x {tokens} tokens: in process, intgrads-batch, intgrads-client, in "
                  "process", flush=True)
            local = [answer_path.in_process(model, texts, work / "local", DEFAULT_CHUNK_TOKENS)]
            shutil.rmtree(work / "local", ignore_errors=True)
            batch = batch_run(model, texts, work, env)
            served = client_run(client, workers, texts, work, env)
            local.append(answer_path.in_process(model, texts, work / "local", DEFAULT_CHUNK_TOKENS))
            shutil.rmtree(work / "local", ignore_errors=True)
            row = {"tokens": tokens, "count": count, "answer_mb": round(local[0]["bytes"] / 1e6, 2),
                   "in_process_per_s": sum(count / item["wall"] for item in local) / 2,
                   "in_process_runs_per_s": [count / item["wall"] for item in local],
                   "batch_steady_per_s": batch["steady_per_s"], "batch_end_to_end_per_s": count / batch["wall"],
                   "batch_wall_s": batch["wall"], "batch_workers": batch["workers"],
                   "client_steady_per_s": served["steady_per_s"], "client_end_to_end_per_s": count / served["wall"],
                   "client_workers": workers}
            row["batch_vs_in_process"] = row["batch_steady_per_s"] / row["in_process_per_s"]
            row["batch_vs_client"] = row["batch_steady_per_s"] / row["client_steady_per_s"]
            rows.append(row)
        return rows
    finally:
        subprocess.run([sys.executable, "-m", "intgrads.launcher", "--stop", "--run-dir", str(work / "run")],
                       env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def print_rows(rows):
    print("\nsentences/s (stand-in, 50 steps, CPU): steady = while answers were written; e2e = whole command")
    print(f"{'tokens':>6} {'N':>3} {'MB':>5} | {'in proc':>7} | {'batch':>6} {'e2e':>5} | {'client':>6} {'e2e':>5} | "
          f"{'batch/in proc':>13} {'batch/client':>12}")
    for r in rows:
        print(f"{r['tokens']:>6} {r['count']:>3} {r['answer_mb']:>5.1f} | {r['in_process_per_s']:>7.2f} | "
              f"{r['batch_steady_per_s']:>6.2f} {r['batch_end_to_end_per_s']:>5.2f} | {r['client_steady_per_s']:>6.2f} "
              f"{r['client_end_to_end_per_s']:>5.2f} | {r['batch_vs_in_process']:>13.2f} {r['batch_vs_client']:>12.2f}")
    print("goals: batch / in process >= 0.9, batch / client > 1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--count", type=int, nargs="+", default=[64, 24], help="sentences per length")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times, back to back")
    parser.add_argument("--json", help="write the rows (and the machine) to this file")
    args = parser.parse_args(argv)
    counts = (args.count * len(args.tokens))[:len(args.tokens)] if len(args.count) == 1 else args.count
    rows = []
    for attempt in range(args.repeat):
        measured = measure(args.tokens, counts)
        rows += [dict(row, attempt=attempt + 1) for row in measured]
        print_rows(measured)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
