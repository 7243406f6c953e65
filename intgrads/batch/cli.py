"""``intgrads-batch``: thousands of sentences through the engine on every worker of a Ray cluster, no server.

    intgrads-batch --demo sentences.txt -o answers/ --n-steps 20
    intgrads-batch -bp bert.pth --tokenizer ./bert-base-uncased reviews.csv --column text -o answers/
    intgrads-batch -xll xlnet-large.pth --cuda --workers-per-gpu 2 --ray-address HEAD:6379 --ray-token-file TOKEN \\
        big.jsonl -o /shared/answers/

The model flags are the launcher's, the input and output the client's, the request options the client's (checked
with the server's messages). The output is the client's: ``NNNNNN.gzip`` per input line and ``index.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..client.cli import input_flags, positive_int, read_input, request_flags
from ..client.index import OutputBusy, OutputRefused, usable_output
from ..client.report import print_report
from ..launcher.cli import check_engine_limits, engine_limit_flags, model_flags, where_flags
from ..launcher.paths import LaunchError
from .job import PROGRAM

INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Attribute every sentence of a file with a model, on the workers of a Ray cluster (one of its "
                    "own on this machine, or a running one), and write one answer file per sentence and index.jsonl, "
                    "as intgrads-client does. A rerun computes only what is missing.",
        epilog="Examples:\n  intgrads-batch --demo sentences.txt -o answers/ --n-steps 20\n"
               "  intgrads-batch -bp bert.pth --tokenizer ./bert-base-uncased reviews.csv --column text -o answers/\n"
               "  intgrads-batch -xll xlnet-large.pth --cuda --ray-address HEAD:6379 --ray-token-file TOKEN "
               "big.jsonl -o /shared/answers/")
    model_flags(parser.add_argument_group("model (the launcher's flags; one model per run)"), server=False)
    parser.add_argument("--model-store", metavar="DIR", help="where the demo model is built and hub tokenizers are "
                                                             "resolved (default model_store/)")
    input_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or messages")
    request = parser.add_argument_group("request options (left out: the defaults a server uses)")
    request_flags(request, server=False)
    limits = parser.add_argument_group("limits")
    engine_limit_flags(limits)
    limits.add_argument("--no-truncate", action="store_true",
                        help="a sentence longer than --max-tokens fails (recorded in the index) instead of being cut")
    _worker_flags(parser.add_argument_group("workers and cluster"))
    return parser


def _worker_flags(workers):
    where_flags(workers)
    workers.add_argument("--num-cuda-devs", type=positive_int, default=None, metavar="N",
                         help="with --cuda: use N GPUs (default: every GPU of this machine, or of the cluster)")
    workers.add_argument("--workers-per-gpu", type=positive_int, default=2, metavar="N",
                         help="with --cuda: workers per GPU, each 1/N of it (default 2: one encodes and writes "
                              "while the other computes)")
    workers.add_argument("--workers", type=positive_int, default=None, metavar="N",
                         help="on CPU: workers (default: one per core, at most 4; on a cluster, one per node), each "
                              "with cores/N torch threads")
    workers.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                         help="sentences a worker runs together (default 1: each alone, bit for bit the server's "
                              "answer; N > 1: one engine call in buckets of similar length, equal to 1e-5)")
    workers.add_argument("--ray-address", metavar="HOST:PORT",
                         help="join this running Ray cluster (its GCS address, as `ray start --address` takes) "
                              "instead of starting one; the output directory and the model files must be on a "
                              "filesystem every node sees")
    workers.add_argument("--ray-token-file", metavar="FILE",
                         help="with --ray-address: the cluster's token file (default $RAY_AUTH_TOKEN_PATH)")
    workers.add_argument("--ray-timeout", type=float, default=60.0, metavar="S",
                         help="with --ray-address: give up when the cluster has not let this run join after S "
                              "seconds (a wrong address or token; default 60)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv=None) -> int:
    """Console entry point: 0 all answered, 1 some failed (or the workers did), 2 usage, 130/143 interrupted."""
    args = build_parser().parse_args(argv)
    code = _guarded(args)
    from .cluster import ABANDONED

    if ABANDONED and argv is None:   # a join still waiting inside Ray: leave without waiting on it at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _guarded(args) -> int:
    before = signal.signal(signal.SIGTERM, _interrupt)   # SIGTERM ends the run as Ctrl-C does, at every stage
    try:
        return _main(args)
    except LaunchError as error:
        print(f"{PROGRAM}: error: {error.message}", file=sys.stderr)
        if error.log_tail:
            print(error.log_tail, file=sys.stderr)
        return error.code
    except KeyboardInterrupt as stop:
        print(f"\n{PROGRAM}: interrupted; what was answered is in {args.output}/index.jsonl (every answer file there "
              "is whole); run the same command again to go on", file=sys.stderr)
        return INTERRUPTED.get(stop.args[0] if stop.args else signal.SIGINT, 130)
    finally:
        signal.signal(signal.SIGTERM, before)


def _main(args) -> int:
    from . import job, plan
    from .cluster import JoinError

    check_engine_limits(args)
    if args.ray_token_file and not args.ray_address:
        raise LaunchError("--ray-token-file goes with --ray-address", code=2)
    if args.ray_timeout <= 0:
        raise LaunchError("--ray-timeout must be more than 0", code=2)
    try:
        usable_output(args.output, make=False)   # before the model is loaded: a wrong -o is said at once
    except OutputRefused as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    plan.check_device(args)
    sentences = read_input(args, PROGRAM)
    if not sentences:
        return 0 if sentences == [] else 2
    fields = plan.request_fields(args)
    run_limits = plan.limits(args)
    model = plan.model_of(args)
    plan.check_request(fields, model.pop("num_labels"), run_limits, model.pop("kind"))
    settings = {"model": model, "device": "cuda" if args.cuda else "cpu", "fields": fields, "options": fields,
                "limits": run_limits, "no_truncate": args.no_truncate}
    try:
        report = job.run(args, settings, sentences, fields)
    except OutputBusy as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    except (JoinError, job.WorkersFailed) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    print_report(PROGRAM, report)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
