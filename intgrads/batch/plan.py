"""From the flags to a batch run's plan, every check done before Ray starts: the model (the launcher's model flags and
specs, loaded once here so that a wrong file is reported at once), the request options checked with the server's
own messages (``intgrads.serving.request``), the limits, and the workers' layout on this machine or a cluster."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..client.sender import OPTION_KEYS
from ..launcher.paths import LaunchError, project_home
from ..serving.request import DEFAULT_LIMITS, DEFAULT_OPTIONS, OPTION_FIELDS, RequestError, check_encoding, check_options
from ..system import usable_cores

NO_LIMIT = 1 << 62
# The index's "options": the request options set (as intgrads-client records them), then the encoding ones.
INDEX_OPTION_KEYS = (*OPTION_KEYS, "dtype", "outputs")


@dataclass
class Layout:
    """How many workers, and what each takes: ``threads`` torch threads, Ray's ``cpus`` and ``gpus`` for it."""

    workers: int
    threads: int
    cpus: float
    gpus: float

    def describe(self, device: str) -> str:
        if device == "cuda":
            return f"{self.workers} worker(s), {self.gpus:g} GPU each"
        return f"{self.workers} worker(s) x {self.threads} torch thread(s)"


def request_fields(args) -> dict:
    """The request's fields the flags set, in the index's order (None: the server's default, left out)."""
    given = {"target": args.target, "n_steps": args.n_steps, "method": args.method, "baseline": args.baseline,
             "precision": args.precision, "tolerance": args.tolerance, "max_steps": args.max_steps,
             "dtype": args.dtype,
             "outputs": args.outputs}
    return {key: given[key] for key in INDEX_OPTION_KEYS if given[key] is not None}


def limits(args) -> dict:
    """The service's limits for a run: the answer-shaping ones from the flags (as the launcher's), none of a
    server's guards (no body, response or work limit: no HTTP client waits on a batch run)."""
    from ..engine.options import MAX_STEPS
    from ..launcher.archive import gzip_level

    return {**DEFAULT_LIMITS, "max_steps": MAX_STEPS, "max_tokens": args.max_tokens, "max_chars": args.max_chars,
            "chunk_tokens": args.chunk_tokens, "gzip_level": gzip_level(args), "max_body_bytes": NO_LIMIT,
            "max_response_bytes": NO_LIMIT, "max_work": 0}


def check_request(fields: dict, num_labels: int, run_limits: dict, kind: str = "classifier") -> None:
    """The options and encoding of ``fields``, with the server's messages; LaunchError (exit 2) for a bad one. For a
    causal LM each line's request is checked by the workers (its target is the line's text)."""
    if kind == "causal_lm":
        if "target" in fields:
            raise LaunchError("--target is a class number for a classifier; a causal LM's target is text: give it "
                              "per line in a JSONL input ({\"sequence\": ..., \"target\": ...})", code=2)
        return
    options = {**DEFAULT_OPTIONS, **{key: value for key, value in fields.items() if key in OPTION_FIELDS}}
    if options["n_steps"] != "auto" and options["n_steps"] > run_limits["max_steps"]:
        raise LaunchError(f"--n-steps {options['n_steps']}: the engine takes at most {run_limits['max_steps']}", code=2)
    try:
        check_options(options, num_labels=num_labels, limits=run_limits)
        check_encoding(fields)
    except RequestError as error:
        raise LaunchError(error.message, code=2) from None


def model_of(args) -> dict:
    """The one model of the run, checked and loaded once (a wrong file, config or tokenizer is reported here):
    {family, weights, config, tokenizer, name, num_labels}. A hub tokenizer is resolved once into the model store,
    so that no worker needs the network."""
    from ..launcher.archive import tokenizer_directory, validate_model
    from ..launcher.specs import model_specs

    given = [flag for flag, value in (("-bp", args.bert_path), ("-xlb", args.xlnet_base_path),
                                      ("-xll", args.xlnet_large_path), ("--hf-model", args.hf_model),
                                      ("--demo", args.demo), ("--demo-lm", getattr(args, "demo_lm", False)))
             if value]
    if len(given) > 1:
        raise LaunchError(f"one model per batch run: {' and '.join(given)} were given (run one after the other, "
                          "each with its own -o)", code=2)
    store = Path(args.model_store).expanduser().resolve() if args.model_store else project_home() / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    spec = model_specs(args, store)[0]
    tokenizer = tokenizer_directory(spec, store / ".build" / spec.name)
    from .job import _say

    # the target is checked with the server's message (check_request); the check is said on stderr, as ours
    facts = validate_model(spec, tokenizer, say=lambda text: _say(args, text))
    return {"family": spec.family, "weights": str(spec.weights), "config": str(spec.config) if spec.config else None,
            "tokenizer": str(tokenizer) if tokenizer else None, "name": spec.name, "num_labels": facts["num_labels"],
            "kind": facts.get("kind", "classifier")}


def local_layout(args) -> tuple[Layout, int, int]:
    """The workers on this machine's own head, and the head's logical CPUs and GPUs. CPU: ``--workers`` (default:
    the launcher's, one per core up to 4) of cores/workers threads each. GPU: ``--workers-per-gpu`` per GPU, each
    ``1/W`` of one. The head gets one CPU more than the workers take, for Ray Data's own small tasks."""
    from ..launcher.cli import default_cpu_workers

    cores = usable_cores()
    if args.cuda:
        gpus = args.num_cuda_devs or _visible_gpus()
        workers = args.workers_per_gpu * gpus
        layout = Layout(workers, max(1, cores // workers), 1, 1 / args.workers_per_gpu)
        return layout, max(cores, workers) + 1, gpus
    workers = args.workers or default_cpu_workers(cores)
    threads = max(1, cores // workers)
    return Layout(workers, threads, threads, 0), workers * threads + 1, 0


def cluster_layout(args, cluster: dict, tasks: int) -> Layout:
    """The workers on a running cluster (``cluster`` from :func:`intgrads.batch.cluster.connect`). GPU:
    ``--workers-per-gpu`` per GPU of the cluster (or ``--num-cuda-devs`` GPUs). CPU: ``--workers`` (default: one per
    node), each with the CPUs it may take while one CPU stays free for Ray Data's own tasks. No more workers than
    ``tasks``; LaunchError (exit 2) when they do not fit."""
    if args.cuda:
        gpus = args.num_cuda_devs or cluster["gpus"]
        if gpus < 1:
            raise LaunchError("--cuda: the Ray cluster has no GPU", code=2)
        workers = args.workers_per_gpu * gpus
        layout = Layout(workers, max(1, min(cluster["min_node_cpus"], cluster["cpus"] // workers)), 1,
                        1 / args.workers_per_gpu)
    else:
        workers = args.workers or cluster["nodes"]
        threads = max(1, min(cluster["min_node_cpus"], (cluster["cpus"] - 1) // workers))
        layout = Layout(workers, threads, threads, 0)
    layout = dataclasses.replace(layout, workers=min(layout.workers, tasks))
    if layout.workers * layout.cpus > cluster["cpus"] - 1:   # the pool would wait for workers that never start
        raise LaunchError(f"{layout.workers} worker(s) of {layout.cpus:g} CPU each do not fit the Ray cluster's "
                          f"{cluster['cpus']} CPUs with one left for Ray Data's own tasks: ask for fewer "
                          "(--workers, --workers-per-gpu)", code=2)
    return layout


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def check_device(args) -> None:
    """--cuda on this machine's own head needs a GPU torch sees, and --num-cuda-devs at most those (the launcher's
    check and messages)."""
    if args.cuda and not args.ray_address:
        from types import SimpleNamespace

        from ..launcher.start import check_cuda

        check_cuda(SimpleNamespace(num_cuda_devs=args.num_cuda_devs or 1))

