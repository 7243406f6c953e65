#!/usr/bin/env python3
"""The answer path: what serving adds to computing, encoding and writing answers (``scripts/bench.py`` part 6).

The model is a stand-in whose computation is GPU-fast on a CPU: a seeded BERT with hidden size 1024 and no
encoder layers, served with ``--hf-model``. It gets N sentences of T tokens each, at 50 steps (12.4 MB answers
at 64 tokens). Two ways are timed:

- in process: ``intgrads.attribute`` (the launcher's chunk_tokens), ``encode_answer``, then the file
  written and fsynced as ``intgrads-client`` writes it, one sentence after another, with every core;
- served: the launcher's defaults (``--hf-model DIR``), then ``intgrads-client FILE -o DIR --url URL`` with its
  defaults, timed from the client's start to its end.

For each, it measures wall seconds per answer and host CPU seconds per answer. Served CPU is the client's
(``RUSAGE_CHILDREN``) plus the TorchServe frontend's and workers' (``/proc/PID/stat`` before and after). It
reports the ratios served / in process (targets: wall <= 1.25, CPU <= 1.5) and the answer MB/s.

    .venv/bin/python scripts/bench_answer_path.py --tokens 64 256 --count 16 --json answer_path.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TICK = os.sysconf("SC_CLK_TCK")
WORDS = ("the film was good and the plot was strange but the music felt bright while every scene seemed slow "
         "our dinner proved charming yet the cast remained honest").split()


def make_stand_in(directory: Path, tokenizer_dir: str, hidden: int = 1024) -> Path:
    """A seeded BERT classifier with ``hidden`` units and zero encoder layers, saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=0, num_attention_heads=16, intermediate_size=4 * hidden,
                        num_labels=2)
    model = BertForSequenceClassification(config).eval()
    out = directory / "stand-in"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True).save_pretrained(out)
    return out


def sentences(tokenizer, count: int, n_tokens: int) -> list[str]:
    """``count`` different sentences of exactly ``n_tokens`` tokens (specials included)."""
    out = []
    for index in range(count):
        words = []
        k = index
        while len(tokenizer(" ".join(words))["input_ids"]) < n_tokens:
            words.append(WORDS[k % len(WORDS)])
            k += 3
        out.append(" ".join(words))
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def in_process(model_dir: Path, texts: list[str], out: Path, chunk_tokens: int) -> dict:
    """Compute, encode and write each answer here, as the client writes files."""
    import intgrads
    from intgrads.client.index import write_atomically

    intgrads.reuse_freed_memory()
    bundle = intgrads.load_model("hf", model_dir)
    payload = intgrads.encode_answer(intgrads.attribute(bundle, texts[0], chunk_tokens=chunk_tokens))   # warm-up
    out.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for index, text in enumerate(texts):
        payload = intgrads.encode_answer(intgrads.attribute(bundle, text, chunk_tokens=chunk_tokens))
        write_atomically(out / f"{index:06d}.gzip", payload)
    result = {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0, "bytes": len(payload)}
    result["fsync"] = fsync_seconds(out / "probe.gzip", payload)
    return result


def fsync_seconds(path: Path, payload: bytes, repeats: int = 5) -> float:
    """Median seconds that fsync adds to writing ``payload`` (the client's durability)."""
    import statistics

    costs = []
    for _ in range(repeats):
        with open(path, "wb") as handle:
            handle.write(payload)
            handle.flush()
            started = time.perf_counter()
            os.fsync(handle.fileno())
            costs.append(time.perf_counter() - started)
    path.unlink()
    return statistics.median(costs)


def served(model_dir: Path, texts: list[str], work: Path, extra_flags=()) -> dict:
    """The launcher's defaults and intgrads-client's defaults; wall and host CPU of the client's run."""
    from bench import free_port

    port = free_port()
    run_dir = work / "run"
    env = dict(os.environ, TMPDIR=str(work))
    env.pop("INTGRADS_TORCH_THREADS", None)
    launcher = [sys.executable, "-m", "intgrads.launcher"]
    result = subprocess.run(launcher + ["--hf-model", str(model_dir), "--model-name", "standin", "-p", str(port),
                                        "--run-dir", str(run_dir), "--model-store", str(work / "store"),
                                        *extra_flags], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    try:
        state = json.loads((run_dir / "state.json").read_text())
        pids = [state["pid"], *state["worker_pids"]]
        url = f"http://127.0.0.1:{port}/predictions/standin"
        client = [sys.executable, "-m", "intgrads.client", "--url", url, "--no-progress"]
        warm = work / "warm.txt"
        warm.write_text("\n".join(texts[:len(state["worker_pids"]) * 2]) + "\n")
        subprocess.run(client + [str(warm), "-o", str(work / "warm-out")], check=True, env=env, capture_output=True)
        source = work / "sentences.txt"
        source.write_text("\n".join(texts) + "\n")
        before = {pid: proc_cpu(pid) for pid in pids}
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.perf_counter()
        run = subprocess.run(client + [str(source), "-o", str(work / "out")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - wall0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run.returncode != 0:
            raise RuntimeError(run.stdout + run.stderr)
        server_cpu = sum(proc_cpu(pid) - before[pid] for pid in pids)
        client_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        size = (work / "out" / "000001.gzip").stat().st_size
        return {"wall": wall, "cpu": server_cpu + client_cpu, "server_cpu": server_cpu, "client_cpu": client_cpu,
                "bytes": size, "workers": len(state["worker_pids"])}
    finally:
        subprocess.run(launcher + ["--stop", "-p", str(port), "--run-dir", str(run_dir)], env=env,
                       capture_output=True)


def run(tokens: int, count: int, steps_note: int = 50, extra_flags=()) -> dict:
    from transformers import AutoTokenizer

    import bench_engine
    from intgrads.launcher import DEFAULT_CHUNK_TOKENS

    work = Path(tempfile.mkdtemp(prefix="intgrads-answer-path-"))
    model_dir = make_stand_in(work, bench_engine.default_tokenizer())
    texts = sentences(AutoTokenizer.from_pretrained(str(model_dir)), count, tokens)
    print(f"[answer path] {count} sentences x {tokens} tokens, {steps_note} steps: in process ...", flush=True)
    local = in_process(model_dir, texts, work / "local", DEFAULT_CHUNK_TOKENS)
    print(f"[answer path] {count} sentences x {tokens} tokens: served (launcher + intgrads-client defaults) ...",
          flush=True)
    remote = served(model_dir, texts, work, extra_flags)
    mb = local["bytes"] / 1e6
    row = {"tokens": tokens, "count": count, "answer_mb": round(mb, 2),
           "in_process_wall_ms": 1e3 * local["wall"] / count, "in_process_cpu_ms": 1e3 * local["cpu"] / count,
           "served_wall_ms": 1e3 * remote["wall"] / count, "served_cpu_ms": 1e3 * remote["cpu"] / count,
           "served_server_cpu_ms": 1e3 * remote["server_cpu"] / count,
           "served_client_cpu_ms": 1e3 * remote["client_cpu"] / count, "workers": remote["workers"],
           "fsync_ms": 1e3 * local["fsync"]}
    row["wall_ratio"] = row["served_wall_ms"] / row["in_process_wall_ms"]
    row["cpu_ratio"] = row["served_cpu_ms"] / row["in_process_cpu_ms"]
    row["served_mb_per_s"] = mb * count / remote["wall"]
    row["in_process_mb_per_s"] = mb * count / local["wall"]
    return row


def print_rows(rows):
    print("\nanswer path: served (launcher + intgrads-client defaults) vs in process (compute + encode + write)")
    print(f"{'tokens':>6} {'MB':>6} | {'in-proc wall':>12} {'cpu':>7} | {'served wall':>11} {'cpu':>7} "
          f"({'server':>6} {'client':>6}) | {'wall x':>6} {'cpu x':>6} | {'MB/s':>6}")
    for r in rows:
        print(f"{r['tokens']:>6} {r['answer_mb']:>6.1f} | {r['in_process_wall_ms']:>10.0f}ms {r['in_process_cpu_ms']:>5.0f}ms"
              f" | {r['served_wall_ms']:>9.0f}ms {r['served_cpu_ms']:>5.0f}ms ({r['served_server_cpu_ms']:>4.0f}ms "
              f"{r['served_client_cpu_ms']:>4.0f}ms) | {r['wall_ratio']:>6.2f} {r['cpu_ratio']:>6.2f} | "
              f"{r['served_mb_per_s']:>6.0f}")
    print("targets: wall x <= 1.25, cpu x <= 1.5 (per answer, ms); fsync of one answer file: "
          + ", ".join(f"{r['fsync_ms']:.0f} ms at {r['answer_mb']:.1f} MB" for r in rows))


def plot(rows, path: str):
    """Per-answer wall and host CPU, served vs in process, by answer size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['tokens']} tokens\n{r['answer_mb']:.1f} MB" for r in rows]
    x = range(len(rows))
    for ax, what in zip(axes, ("wall", "cpu")):
        ax.bar([i - 0.2 for i in x], [r[f"in_process_{what}_ms"] for r in rows], 0.4, label="in process")
        ax.bar([i + 0.2 for i in x], [r[f"served_{what}_ms"] for r in rows], 0.4, label="served (launcher + client)")
        ax.set_xticks(list(x), labels)
        ax.set_ylabel(f"{'wall' if what == 'wall' else 'host CPU'} ms per answer")
        ax.legend(fontsize=8)
    figure.suptitle("Answer path, GPU-fast stand-in (hidden 1024, no layers, 50 steps)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--body", action="store_true",
                        help="serve with --handoff-max-bytes 0: every answer in the HTTP body (for comparison)")
    args = parser.parse_args(argv)
    flags = ["--handoff-max-bytes", "0"] if args.body else []
    rows = [run(tokens, args.count, extra_flags=flags) for tokens in args.tokens]
    print_rows(rows)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
