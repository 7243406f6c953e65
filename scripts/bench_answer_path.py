#!/usr/bin/env python3
"""The answer path: what serving adds to computing, encoding and writing answers (``scripts/bench.py`` part 6).

Models (``--shape``): on a CPU, ``stand-in``, a seeded BERT with hidden size 1024 and no encoder layers whose
computation is GPU-fast, served with ``--hf-model`` (12.4 MB answers at 64 tokens, 50 steps); on a GPU
(``--device cuda``), the real shapes ``bert-base`` (``-bp``) and ``xlnet-large`` (``-xll``) with seeded weights.
Each gets N sentences of T tokens, at 50 steps. Ways timed:

- engine (GPU only): ``intgrads.attribute`` alone, one sentence after another (the engine's own throughput);
- in process: ``intgrads.attribute`` (the launcher's chunk_tokens), ``encode_answer`` (the launcher's gzip level,
  0 by default), then the file written and fsynced as ``intgrads-client`` writes it, one
  sentence after another;
- served: the launcher's defaults (with ``--cuda --workers-per-gpu W`` on a GPU, for each W given), then
  ``intgrads-client FILE -o DIR --url URL`` with its defaults (plus ``--client-flags``), timed from the client's
  start to its end.

For each, it measures wall seconds per answer (and sentences/s) and host CPU seconds per answer. Served CPU is the
client's (``RUSAGE_CHILDREN``) plus the TorchServe frontend's and workers' (``/proc/PID/stat`` before and after).
It reports the ratios served / in process (CPU targets: wall <= 1.25, CPU <= 1.5; GPU target: served sentences/s
>= 0.8 x the engine's), the answer MB/s and, on a GPU, the engine's peak CUDA memory.

    .venv/bin/python scripts/bench_answer_path.py --tokens 64 256 --count 16 --json answer_path.json
    python scripts/bench_answer_path.py --device cuda --shape bert-base --tokens 64 512 --workers-per-gpu 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import default_tokenizer, free_port, proc_cpu, xlnet_tokenizer  # noqa: E402

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


SHAPES = ("stand-in", "bert-base", "xlnet-large")


def make_model(shape: str, work: Path) -> dict:
    """The model of ``shape``: its served name, launcher flags and ``load_model`` arguments."""
    import torch

    if shape == "stand-in":
        directory = make_stand_in(work, default_tokenizer())
        return {"name": "standin", "flags": ["--hf-model", str(directory), "--model-name", "standin"],
                "family": "hf", "weights": directory, "config": None, "tokenizer": None}
    torch.manual_seed(0)
    if shape == "bert-base":
        from transformers import BertConfig, BertForSequenceClassification

        name, flag, tokenizer = "bert", "-bp", Path(default_tokenizer())
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    else:
        from transformers import XLNetConfig, XLNetForSequenceClassification

        name, flag, tokenizer = "xlnet-large", "-xll", xlnet_tokenizer(work / "xlnet-tokenizer")
        model = XLNetForSequenceClassification(XLNetConfig(d_model=1024, n_layer=24, n_head=16, d_inner=4096,
                                                           num_labels=2))
    weights, config = work / f"{name}.pth", work / f"{name}-config.json"
    torch.save(model.eval().state_dict(), weights)
    model.config.to_json_file(str(config))
    del model
    return {"name": name, "flags": [flag, str(weights), "--tokenizer", f"{name}={tokenizer}", "--config",
                                    f"{name}={config}"],
            "family": name, "weights": weights, "config": config, "tokenizer": str(tokenizer)}


def sentences(tokenizer, count: int, n_tokens: int) -> list[str]:
    """``count`` different sentences of ``n_tokens`` tokens (specials included; a word that overshoots is
    replaced by one-token words where the vocabulary allows)."""
    def length(words):
        return len(tokenizer(" ".join(words))["input_ids"])

    out = []
    for index in range(count):
        words = []
        k = index
        while length(words) < n_tokens:
            words.append(WORDS[k % len(WORDS)])
            k += 3
        if length(words) > n_tokens:
            words.pop()
            while length(words + ["a"]) <= n_tokens and len(words) < 4 * n_tokens:
                words.append("a")
        out.append(" ".join(words))
    return out


def in_process(model: dict, texts: list[str], out: Path, chunk_tokens: int, device: str = "cpu",
               level: int | None = None) -> dict:
    """Compute, encode and write each answer here, as the client writes files; on a GPU, the engine alone too."""
    import torch

    import intgrads
    from intgrads.client.index import write_atomically

    if level is None:   # the launcher's default --gzip-level
        from intgrads.launcher.archive import gzip_level

        level = gzip_level(argparse.Namespace())
    intgrads.reuse_freed_memory()
    bundle = intgrads.load_model(model["family"], model["weights"], config=model["config"],
                                 tokenizer=model["tokenizer"], device=device)
    payload = intgrads.encode_answer(intgrads.attribute(bundle, texts[0], chunk_tokens=chunk_tokens),
                                     level=level)   # warm-up
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        wall0 = time.perf_counter()
        for text in texts:
            intgrads.attribute(bundle, text, chunk_tokens=chunk_tokens)
        torch.cuda.synchronize()
        result["engine_wall"] = time.perf_counter() - wall0
        result["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
        result["cuda_peak_reserved"] = torch.cuda.max_memory_reserved()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for index, text in enumerate(texts):
        payload = intgrads.encode_answer(intgrads.attribute(bundle, text, chunk_tokens=chunk_tokens), level=level)
        write_atomically(out / f"{index:06d}.gzip", payload)
    result.update(wall=time.perf_counter() - wall0, cpu=time.process_time() - cpu0, bytes=len(payload))
    result["fsync"] = fsync_seconds(out / "probe.gzip", payload)
    del bundle
    if device == "cuda":
        torch.cuda.empty_cache()
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


def served(model: dict, batches: dict, work: Path, extra_flags=(), client_flags=()) -> dict:
    """One server with the launcher's defaults (and ``extra_flags``); for each ``{tokens: texts}`` batch, one
    ``intgrads-client`` run with its defaults: {tokens: wall and host CPU of the client's run}."""
    port = free_port()
    run_dir = work / "run"
    env = dict(os.environ, TMPDIR=str(work))
    env.pop("INTGRADS_TORCH_THREADS", None)
    launcher = [sys.executable, "-m", "intgrads.launcher"]
    result = subprocess.run(launcher + [*model["flags"], "-p", str(port), "--run-dir", str(run_dir),
                                        "--model-store", str(work / "store"), *map(str, extra_flags)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    try:
        state = json.loads((run_dir / "state.json").read_text())
        url = f"http://127.0.0.1:{port}/predictions/{model['name']}"
        client = [sys.executable, "-m", "intgrads.client", "--url", url, "--no-progress", *client_flags]
        if state.get("frontend") == "ray":   # every process of the run's Ray cluster counts as the server
            from intgrads.launcher.ray_cluster import cluster_processes

            pids, workers = list(cluster_processes(Path(state["ray_dir"]))), state["replicas"]
        else:
            pids, workers = [state["pid"], *state["worker_pids"]], len(state["worker_pids"])
        return {tokens: client_run(client, texts, work, env, pids, workers) for tokens, texts in batches.items()}
    finally:
        subprocess.run(launcher + ["--stop", "-p", str(port), "--run-dir", str(run_dir)], env=env,
                       capture_output=True)


def client_run(client: list, texts: list[str], work: Path, env: dict, pids: list[int], workers: int) -> dict:
    """A warm-up run, then the timed run of ``texts``; the answers are deleted afterwards."""
    warm = work / "warm.txt"
    warm.write_text("\n".join(texts[:2 * workers]) + "\n")
    for folder in ("warm-out", "out"):
        shutil.rmtree(work / folder, ignore_errors=True)
    subprocess.run(client + [str(warm), "-o", str(work / "warm-out")], check=True, env=env, capture_output=True)
    startup = client_startup_cpu(client, env)
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
    for folder in ("warm-out", "out"):
        shutil.rmtree(work / folder, ignore_errors=True)
    return {"wall": wall, "cpu": server_cpu + client_cpu, "server_cpu": server_cpu, "client_cpu": client_cpu,
            "bytes": size, "workers": workers, "client_startup_cpu": startup}


def client_startup_cpu(client: list, env: dict, repeats: int = 3) -> float:
    """Median CPU seconds of the client's start (the interpreter, its imports, torch among them: it checks
    every answer with ``torch.load``) and end, with no sentence: ``--help``."""
    costs = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(client + ["--help"], check=True, env=env, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        costs.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return sorted(costs)[repeats // 2]


def run_shape(shape: str, tokens_list, counts, device: str = "cpu", layouts=((),), client_flags=(),
              frontends=("torchserve",), level: int | None = None) -> list[dict]:
    """In process, then served with each layout (a tuple of launcher flags) on each front end, for each length;
    ``level``: the gzip level of both (default: the launcher's for the device)."""
    from transformers import AutoTokenizer

    from intgrads.engine.models import load_tokenizer
    from intgrads.launcher import DEFAULT_CHUNK_TOKENS

    work = Path(tempfile.mkdtemp(prefix="intgrads-answer-path-"))
    model = make_model(shape, work)
    if shape == "stand-in":
        tokenizer = AutoTokenizer.from_pretrained(str(model["weights"]))
    else:
        tokenizer = load_tokenizer(model["family"], model["tokenizer"])
    batches = {tokens: sentences(tokenizer, count, tokens) for tokens, count in zip(tokens_list, counts)}
    local = {}
    for tokens, texts in batches.items():
        print(f"[answer path] {shape} {len(texts)} sentences x {tokens} tokens, 50 steps, {device}: in process ...",
              flush=True)
        local[tokens] = in_process(model, texts, work / "local", DEFAULT_CHUNK_TOKENS, device, level)
        print(f"[answer path]   {json.dumps(local[tokens])}", flush=True)
        shutil.rmtree(work / "local", ignore_errors=True)
    rows = []
    for frontend in frontends:
        for flags in layouts:
            flags = (*flags, "--frontend", frontend, *(() if level is None else ("--gzip-level", level)))
            print(f"[answer path] {shape}: served {' '.join(map(str, flags))} ...", flush=True)
            remote = served(model, batches, work, flags, client_flags)
            print(f"[answer path]   {json.dumps(remote)}", flush=True)
            rows += [dict(make_row(shape, device, tokens, len(batches[tokens]), local[tokens], remote[tokens]),
                          frontend=frontend) for tokens in batches]
    shutil.rmtree(work, ignore_errors=True)
    return rows


def make_row(shape, device, tokens, count, local, remote) -> dict:
    mb = local["bytes"] / 1e6
    row = {"shape": shape, "device": device, "tokens": tokens, "count": count, "answer_mb": round(mb, 2),
           "in_process_wall_ms": 1e3 * local["wall"] / count, "in_process_cpu_ms": 1e3 * local["cpu"] / count,
           "served_wall_ms": 1e3 * remote["wall"] / count, "served_cpu_ms": 1e3 * remote["cpu"] / count,
           "served_server_cpu_ms": 1e3 * remote["server_cpu"] / count,
           "served_client_cpu_ms": 1e3 * remote["client_cpu"] / count, "workers": remote["workers"],
           "fsync_ms": 1e3 * local["fsync"]}
    if "client_startup_cpu" in remote:   # a fixed cost per client run, as in process leaves out its own start
        row["client_startup_cpu_ms"] = 1e3 * remote["client_startup_cpu"]
        row["cpu_ratio_without_startup"] = ((row["served_cpu_ms"] - row["client_startup_cpu_ms"] / count)
                                            / row["in_process_cpu_ms"])
    row["wall_ratio"] = row["served_wall_ms"] / row["in_process_wall_ms"]
    row["cpu_ratio"] = row["served_cpu_ms"] / row["in_process_cpu_ms"]
    row["served_mb_per_s"] = mb * count / remote["wall"]
    row["in_process_mb_per_s"] = mb * count / local["wall"]
    row["served_per_s"] = count / remote["wall"]
    row["in_process_per_s"] = count / local["wall"]
    if "engine_wall" in local:
        row["engine_per_s"] = count / local["engine_wall"]
        row["served_vs_engine"] = row["served_per_s"] / row["engine_per_s"]
        row["cuda_peak_allocated_gb"] = local["cuda_peak_allocated"] / 2**30
        row["cuda_peak_reserved_gb"] = local["cuda_peak_reserved"] / 2**30
    return row


def run(tokens: int, count: int, extra_flags=(), frontends=("torchserve", "ray")) -> list[dict]:
    """The CPU stand-in at one sentence length on each front end (bench.py part 6)."""
    return run_shape("stand-in", [tokens], [count], "cpu", (tuple(extra_flags),), frontends=frontends)


def print_rows(rows):
    print("\nanswer path: served (launcher + intgrads-client defaults) vs in process (compute + encode + write)")
    print(f"{'front end':>10} {'shape':>11} {'tokens':>6} {'W':>2} {'MB':>6} | {'in-proc wall':>12} {'cpu':>7} | {'served wall':>11} "
          f"{'cpu':>7} ({'server':>6} {'client':>6}) | {'wall x':>6} {'cpu x':>6} | {'MB/s':>6} | {'sent/s':>6}")
    for r in rows:
        print(f"{r.get('frontend', 'torchserve'):>10} {r['shape']:>11} {r['tokens']:>6} {r['workers']:>2} {r['answer_mb']:>6.1f} | "
              f"{r['in_process_wall_ms']:>10.0f}ms {r['in_process_cpu_ms']:>5.0f}ms"
              f" | {r['served_wall_ms']:>9.0f}ms {r['served_cpu_ms']:>5.0f}ms ({r['served_server_cpu_ms']:>4.0f}ms "
              f"{r['served_client_cpu_ms']:>4.0f}ms) | {r['wall_ratio']:>6.2f} {r['cpu_ratio']:>6.2f} | "
              f"{r['served_mb_per_s']:>6.0f} | {r['served_per_s']:>6.2f}")
    gpu = [r for r in rows if "engine_per_s" in r]
    if gpu:
        print("\nGPU: sentences/s, engine alone vs in process (engine + encode + write) vs served; target served >= 0.8 x engine")
        print(f"{'shape':>11} {'tokens':>6} {'W':>2} | {'engine':>7} {'in-proc':>7} {'served':>7} | {'served/engine':>13} | "
              f"{'CUDA peak alloc':>15} {'reserved':>8}")
        for r in gpu:
            print(f"{r['shape']:>11} {r['tokens']:>6} {r['workers']:>2} | {r['engine_per_s']:>7.2f} "
                  f"{r['in_process_per_s']:>7.2f} {r['served_per_s']:>7.2f} | {r['served_vs_engine']:>13.2f} | "
                  f"{r['cuda_peak_allocated_gb']:>13.2f}GB {r['cuda_peak_reserved_gb']:>6.2f}GB")
    for r in rows:
        if "client_startup_cpu_ms" in r:
            print(f"{r.get('frontend', 'torchserve'):>10} {r['tokens']:>6} tokens: the client's start costs "
                  f"{r['client_startup_cpu_ms']:.0f} ms CPU a run; without it, cpu x {r['cpu_ratio_without_startup']:.2f}")
    print("CPU targets: wall x <= 1.25, cpu x <= 1.5 (per answer, ms); fsync of one answer file: "
          + ", ".join(f"{r['fsync_ms']:.0f} ms at {r['answer_mb']:.1f} MB" for r in rows))


def plot(rows, path: str):
    """Per-answer wall and host CPU, served vs in process, by answer size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [("" if r.get("shape", "stand-in") == "stand-in" else f"{r['shape']} W{r['workers']}\n")
              + f"{r['tokens']} tokens\n{r['answer_mb']:.1f} MB" for r in rows]
    x = range(len(rows))
    for ax, what in zip(axes, ("wall", "cpu")):
        ax.bar([i - 0.2 for i in x], [r[f"in_process_{what}_ms"] for r in rows], 0.4, label="in process")
        ax.bar([i + 0.2 for i in x], [r[f"served_{what}_ms"] for r in rows], 0.4, label="served (launcher + client)")
        ax.set_xticks(list(x), labels)
        ax.set_ylabel(f"{'wall' if what == 'wall' else 'host CPU'} ms per answer")
        ax.legend(fontsize=8)
    shapes = sorted({r.get("shape", "stand-in") for r in rows})
    figure.suptitle(f"Answer path, {', '.join(shapes)} (50 steps; stand-in: hidden 1024, no layers)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="stand-in")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--count", type=int, nargs="+", default=[16],
                        help="sentences per length: one number for all, or one per --tokens")
    parser.add_argument("--workers-per-gpu", type=int, nargs="+", default=[1],
                        help="with --device cuda: the layouts served (--cuda --workers-per-gpu W), one server each")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--body", action="store_true",
                        help="serve with --handoff-max-bytes 0: every answer in the HTTP body (for comparison)")
    parser.add_argument("--frontends", nargs="+", choices=("torchserve", "ray"), default=["torchserve"],
                        help="the front ends served, each with the launcher's defaults (side by side in one run)")
    parser.add_argument("--gzip-level", type=int, choices=(0, 1), default=None,
                        help="the answers' gzip level in process and served (default: the launcher's, 0)")
    parser.add_argument("--client-flags", default="",
                        help="extra intgrads-client flags, e.g. '--no-handoff --rebuild always' (compact bodies) "
                             "or '--no-handoff --rebuild never' (whole bodies)")
    args = parser.parse_args(argv)
    flags = ("--handoff-max-bytes", "0") if args.body else ()
    counts = args.count * len(args.tokens) if len(args.count) == 1 else args.count
    if len(counts) != len(args.tokens):
        parser.error("--count takes one number or one per --tokens")
    if args.device == "cuda":
        layouts = [("--cuda", "--workers-per-gpu", w, *flags) for w in args.workers_per_gpu]
    else:
        layouts = [flags]
    rows = run_shape(args.shape, args.tokens, counts, args.device, layouts, tuple(args.client_flags.split()),
                     tuple(args.frontends), args.gzip_level)
    print_rows(rows)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
