"""The ``intgrads`` command line: its flags, their checks, and ``main``.

    intgrads -bp /path/to/bert.pth --cpu
    intgrads -xlb /path/to/xlnet-base.pth --cuda --num-cuda-devs 4 -h 0.0.0.0 -p 8008
    intgrads --demo
    intgrads --stop [-p PORT]

Reading the flags imports neither torch nor TorchServe: ``--help`` and ``--stop`` are instant.
"""

from __future__ import annotations

import argparse
import sys

from ..engine.options import DEFAULT_CHUNK_TOKENS
from ..system import usable_cores
from .paths import LaunchError, project_home, run_paths
from .process import stop_server

MAX_DEFAULT_CPU_WORKERS = 4


def default_cpu_workers(cores: int, n_models: int = 1) -> int:
    """CPU workers per model when ``--workers`` is not given: one per core, at most 4 in all, shared among
    the models (at least one each). Each worker then runs cores / workers torch threads. On the 2-core
    machine of docs/benchmarks.md, 2 workers x 1 thread gave the most sentences per second whenever several
    requests are in flight (intgrads-client sends 4 at a time); 1 worker x 2 threads only wins for a client
    that sends one request at a time (``--workers 1``)."""
    return max(1, min(cores, MAX_DEFAULT_CPU_WORKERS) // max(1, n_models))


def resolve_workers(args, n_models: int, cores: int | None = None) -> int:
    """Workers per model: --workers-per-gpu x --num-cuda-devs with --cuda, else --workers or the default
    above; sets ``args.workers`` so that the archives' model-config.yaml records the same number."""
    if args.cuda:
        return args.workers_per_gpu * args.num_cuda_devs
    if args.workers is None:
        args.workers = default_cpu_workers(usable_cores() if cores is None else cores, n_models)
    return args.workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intgrads", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve integrated and intermediate gradients of BERT/XLNet sentiment classifiers with "
                    "TorchServe (or Ray Serve).\nPackages each model into model_store/<name>.mar, starts the server, "
                    "waits until every worker is ready and prints the curl to use.",
        epilog="Several models may be served at once (each model flag once). --tokenizer, --config and "
               "--model-name take VALUE for a single model or KEY=VALUE (KEY: bert, xlnet-base, xlnet-large, hf, "
               "demo) to say which model they are for.\n\nExamples:\n"
               "  intgrads -bp bert.pth --tokenizer ./bert-base-uncased --cpu\n"
               "  intgrads -xlb xlnet-base.pth --cuda --num-cuda-devs 4 -h 0.0.0.0 -p 8008\n"
               "  intgrads --demo\n  intgrads --stop -p 8008")
    model_flags(parser.add_argument_group("models"))
    _device_flags(parser.add_argument_group("devices and workers"))
    _request_default_flags(parser.add_argument_group(
        "server-wide defaults for requests (a request may override them)"))
    _limit_flags(parser.add_argument_group("limits"))
    _server_flags(parser.add_argument_group("server"))
    parser.set_defaults(cuda=False)
    return parser


def model_flags(models, server: bool = True):
    """The model flags (also the batch job's, ``server=False``): -bp, -xlb, -xll, --hf-model, --demo, --tokenizer,
    --config, --model-name."""
    models.add_argument("-bp", "--bert-path", metavar="PTH", help="state-dict .pth of a BERT sentiment classifier")
    models.add_argument("-xlb", "--xlnet-base-path", metavar="PTH", help="state-dict .pth of an XLNet-base classifier")
    models.add_argument("-xll", "--xlnet-large-path", metavar="PTH", help="state-dict .pth of an XLNet-large classifier")
    models.add_argument("--hf-model", metavar="DIR", help="save_pretrained directory of any sequence classifier or "
                                                          "causal LM (Llama, Qwen, Mistral, Gemma, Phi, GPT-2, OLMo, ...)")
    models.add_argument("--demo", action="store_true",
                        help="a small sentiment classifier built offline on first use (cached in the model store)")
    models.add_argument("--demo-lm", action="store_true",
                        help="a small seeded causal LM built offline on first use (served as demo-lm)")
    models.add_argument("--tokenizer", action="append", default=[], metavar="[KEY=]DIR",
                        help="tokenizer directory (read offline) or hub name; default: the family's hub tokenizer "
                             "(bert-base-uncased, xlnet-base-cased, xlnet-large-cased), resolved once at archive time")
    models.add_argument("--config", action="append", default=[], metavar="[KEY=]PATH",
                        help="config.json (or a directory holding one) for a .pth whose shape is not the family's")
    models.add_argument("--model-name", action="append", default=[], metavar="[KEY=]NAME",
                        help=("name in the URL /predictions/NAME" if server else "the model's name (where its "
                              "built tokenizer is kept in the model store)")
                        + " (default: bert, xlnet-base, xlnet-large, hf, demo, demo-lm)")


def where_flags(device):
    """--cuda / --cpu (also the batch job's); ``cuda`` is False unless --cuda."""
    where = device.add_mutually_exclusive_group()
    where.add_argument("--cuda", dest="cuda", action="store_true", help="run the workers on GPUs")
    where.add_argument("--cpu", dest="cuda", action="store_false", help="run the workers on the CPU (default)")
    device.set_defaults(cuda=False)


def _device_flags(device):
    where_flags(device)
    device.add_argument("--num-cuda-devs", type=int, default=1, metavar="N",
                        help="with --cuda: spread the workers over GPUs 0..N-1 (default 1)")
    device.add_argument("--workers-per-gpu", type=int, default=2, metavar="N",
                        help="with --cuda: workers per GPU and model (default 2: one encodes while the other "
                             "computes)")
    device.add_argument("--workers", type=int, default=None, metavar="N",
                        help="on CPU: workers per model (default: one per core, at most 4 in all, the layout "
                             "with the most sentences/s; --workers 1 for one request at a time); each uses "
                             "cores/workers torch threads")
    device.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="TorchServe batch size: requests handed to a worker at once (default 1)")
    device.add_argument("--max-batch-delay", type=int, default=50, metavar="MS",
                        help="how long TorchServe waits to fill a batch, in ms (default 50)")


def _request_default_flags(answer):
    from ..engine.baselines import BASELINES
    from ..engine.quadrature import METHODS

    answer.add_argument("-b", "--baseline", default="zero",
                        help=f"baseline: {', '.join(BASELINES)} (default zero)")
    answer.add_argument("--n-steps", type=int, default=50, metavar="N", help="integration steps (default 50)")
    answer.add_argument("--method", default="gausslegendre",
                        help=f"quadrature: {', '.join(METHODS)} (default gausslegendre)")
    answer.add_argument("--target", default="1", metavar="CLASS",
                        help="class whose logit is attributed: an index or 'predicted' (default 1)")


def engine_limit_flags(limits):
    """The limits that shape an answer (also the batch job's): --max-tokens, --max-chars, --chunk-tokens, --gzip-level."""
    limits.add_argument("--max-tokens", type=int, default=512, metavar="N",
                        help="longer sentences are truncated to this many tokens (default 512, capped by the model)")
    limits.add_argument("--max-chars", type=int, default=100_000, metavar="N",
                        help="longest sentence accepted, in characters (default 100000)")
    limits.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS, metavar="N",
                        help="bound memory: at most N (padded) tokens per forward/backward chunk when a request "
                             f"sets no internal_batch_size (default {DEFAULT_CHUNK_TOKENS}: 64 tokens x 50 steps in "
                             "one pass, a 512-token bert-base request under 4 GB on CPU; 0: all steps at once)")
    limits.add_argument("--gzip-level", type=int, choices=(0, 1), default=None, metavar="{0,1}",
                        help="answers' gzip: 0 (the default) stores: ~4x faster to write and ~3x faster to check "
                             "than 1, which compresses (ISA-L) for ~8%% fewer bytes of float32 gradients")


def _limit_flags(limits):
    limits.add_argument("--max-steps", type=int, default=500, metavar="N", help="largest n_steps accepted (default 500)")
    engine_limit_flags(limits)
    limits.add_argument("--max-sequences", type=int, default=16, metavar="N",
                        help="most sentences in one request's \"sequences\" (default 16)")
    limits.add_argument("--max-body-bytes", type=int, default=1_048_576, metavar="N",
                        help="largest request body accepted, in bytes (default 1 MB)")
    limits.add_argument("--max-work", type=float, default=None, metavar="G",
                        help="work budget per request, in G multiply-accumulates (sentences x tokens x steps x "
                             "model size; see docs/serving.md, Limits); over it: 413 before any work (default: what a worker "
                             "does in half its response timeout; 0: no limit)")
    limits.add_argument("--handoff-max-bytes", type=int, default=4 * 1024 ** 3, metavar="N",
                        help="on loopback, answers asked for as files (X-Intgrads-Handoff: file, as intgrads-client "
                             "does) are written to the run directory's handoff/ and expire after 10 minutes; "
                             "at most N bytes wait there (default 4 GiB; 0: answers always in the body)")
    limits.add_argument("--response-timeout", type=int, default=None, metavar="S",
                        help="seconds a worker may take for one batch (default from config.properties)")
    limits.add_argument("--startup-timeout", type=int, default=None, metavar="S",
                        help="seconds a worker may take to load the model (default from config.properties)")


def _server_flags(server):
    server.add_argument("--frontend", choices=("torchserve", "ray"), default="torchserve",
                        help="the server: TorchServe (default) or Ray Serve (installed on first use; one Serve "
                             "application per model, replicas for workers, a Ray head of its own with token auth)")
    server.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --frontend ray: deploy on this running cluster, given by its dashboard's address "
                             "(host:8265) instead of starting a Ray head")
    server.add_argument("--ray-token-file", default=None, metavar="FILE",
                        help="with --ray-address: the cluster's token file (default $RAY_AUTH_TOKEN_PATH)")
    server.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                        help="with --frontend ray: a request's body must come whole within S seconds, else 408 "
                             "and the connection is closed (default 60)")
    server.add_argument("--trusted-proxy", action="append", default=None, metavar="ADDR",
                        help="with --frontend ray: the address of a reverse proxy whose X-Forwarded-For is believed "
                             "(repeatable); without it, a request that carries one needs the key, and with it a "
                             "request from the proxy without one needs the key")
    server.add_argument("-h", "--host", default=None,
                        help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface, token auth on)")
    server.add_argument("-p", "--port", type=int, default=8888, help="inference port (default 8888)")
    server.add_argument("--management-port", type=int, default=None, metavar="PORT",
                        help="management API port with token auth (default PORT+1); on loopback the management "
                             "API is a Unix socket in the run directory, for this user only")
    server.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="metrics port (default PORT+2; gRPC takes the two after it)")
    server.add_argument("--model-store", default=None, metavar="DIR", help="where the .mar files go (default model_store/)")
    server.add_argument("--run-dir", default=None, metavar="DIR",
                        help="the run's config, logs and temp files (default logs/serve-PORT/)")
    server.add_argument("--ts-config", default=None, metavar="FILE",
                        help="TorchServe config.properties to start from (default: the project's config.properties)")
    server.add_argument("--token-expiration-min", type=int, default=None, metavar="MIN",
                        help="lifetime of the auth keys when token auth is on")
    server.add_argument("--ready-timeout", type=float, default=900, metavar="S",
                        help="give up if the workers are not ready after this many seconds (default 900)")
    server.add_argument("--rebuild", action="store_true", help="rebuild the archives even when they look current")
    server.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    server.add_argument("--stop", action="store_true", help="stop the server on -p PORT (or --run-dir) and exit")
    server.add_argument("--scale", metavar="MODEL=N", default=None,
                        help="scale MODEL of the server on -p PORT to N workers through its management API and "
                             "exit; refused above what this machine's memory holds")
    server.add_argument("--help", action="help", help="show this help and exit")


def check_flags(args):
    """Refuse (exit 2) flag values out of range, before anything is built or started."""
    if args.cuda:
        if args.num_cuda_devs < 1 or args.workers_per_gpu < 1:
            raise LaunchError("--num-cuda-devs and --workers-per-gpu must be at least 1", code=2)
    elif args.workers is not None and args.workers < 1:
        raise LaunchError("--workers must be at least 1", code=2)
    for flag, value in (("--batch-size", args.batch_size), ("--max-steps", args.max_steps),
                        ("--max-sequences", args.max_sequences), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise LaunchError(f"{flag} must be at least 1", code=2)
    check_engine_limits(args)
    if args.handoff_max_bytes < 0:
        raise LaunchError("--handoff-max-bytes must be 0 (no hand-off) or more", code=2)
    if args.max_work is not None and args.max_work < 0:
        raise LaunchError("--max-work must be 0 (no limit) or more", code=2)
    if args.max_batch_delay < 0:
        raise LaunchError("--max-batch-delay must be 0 or more", code=2)
    if (args.ray_address or args.ray_token_file) and args.frontend != "ray":
        raise LaunchError("--ray-address and --ray-token-file go with --frontend ray", code=2)
    if (args.trusted_proxy or args.body_timeout != 60.0) and args.frontend != "ray":
        raise LaunchError("--trusted-proxy and --body-timeout go with --frontend ray (put a reverse proxy with "
                          "timeouts in front of TorchServe)", code=2)
    if args.body_timeout <= 0:
        raise LaunchError("--body-timeout must be more than 0", code=2)
    if args.frontend == "ray":
        torchserve_only = [flag for flag, given in (("--batch-size", args.batch_size != 1),
                                                    ("--management-port", args.management_port is not None),
                                                    ("--metrics-port", args.metrics_port is not None),
                                                    ("--token-expiration-min", args.token_expiration_min is not None))
                           if given]
        if torchserve_only:
            raise LaunchError(f"{', '.join(torchserve_only)}: TorchServe's, not Ray Serve's (a replica answers one "
                              "request at a time; metrics and scaling go through the inference port and --scale)",
                              code=2)
    check_defaults(args)


def check_engine_limits(args):
    """--max-tokens and --max-chars at least 1, --chunk-tokens 0 or more (exit 2)."""
    for flag, value in (("--max-tokens", args.max_tokens), ("--max-chars", args.max_chars)):
        if value < 1:
            raise LaunchError(f"{flag} must be at least 1", code=2)
    if args.chunk_tokens is not None and args.chunk_tokens < 0:
        raise LaunchError("--chunk-tokens must be 0 (all steps at once) or more", code=2)


def check_defaults(args):
    """The server-wide request defaults (--method, --baseline, --n-steps, --target), checked."""
    from ..engine.baselines import BASELINES
    from ..engine.quadrature import METHODS, min_steps

    if args.method not in METHODS:
        raise LaunchError(f"--method {args.method}: choose one of {', '.join(METHODS)}", code=2)
    if args.baseline not in BASELINES:
        raise LaunchError(f"-b/--baseline {args.baseline}: choose one of {', '.join(BASELINES)}", code=2)
    if not (min_steps(args.method) <= args.n_steps <= args.max_steps):
        raise LaunchError(f"--n-steps {args.n_steps}: must be from {min_steps(args.method)} to --max-steps "
                          f"({args.max_steps}) for {args.method}", code=2)
    if args.target != "predicted":
        try:
            if int(args.target) < 0:
                raise ValueError
        except ValueError:
            raise LaunchError(f"--target {args.target}: give a class index (0, 1, ...) or 'predicted'", code=2) from None


def frontend_of(paths) -> str:
    """The front end the run directory's last server was started with (state.json), torchserve by default."""
    import json

    try:
        return json.loads(paths.state.read_text(encoding="utf-8")).get("frontend") or "torchserve"
    except (OSError, ValueError):
        return "torchserve"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = run_paths(args, project_home())
        on_ray = frontend_of(paths) == "ray"
        if args.stop:
            if on_ray:
                from .start_ray import stop_ray

                stop_ray(paths)
            else:
                stop_server(paths)
            return 0
        if args.scale:
            if on_ray:
                from .start_ray import scale_ray as scale
            else:
                from .management import scale

            print(scale(paths, args.scale))
            return 0
        if args.frontend == "ray":
            from .start_ray import start_ray

            return start_ray(args)
        from .start import start

        return start(args)
    except LaunchError as error:
        print(f"intgrads: error: {error.message}", file=sys.stderr)
        if error.log_tail:
            print(error.log_tail, file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("intgrads: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

