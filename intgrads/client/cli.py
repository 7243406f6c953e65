"""``intgrads-client``: send a file of sentences (``intgrads-client FILE -o DIR --url URL``) or draw an answer
(``intgrads-client render ANSWER.gzip -o out.png|out.html``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .index import INDEX_NAME, OutputBusy
from .inputs import read_sentences
from .intake import DEFAULT_MAX_ANSWER_BYTES
from .report import print_report
from .sender import REBUILD_CHOICES, TOKEN_ENV, Client, RunAborted


def _target(value: str):
    if value == "predicted":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"target must be an integer class or 'predicted'; got {value!r}") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value!r}")
    return number


def steps(value: str):
    """--n-steps: a positive integer, or auto."""
    return "auto" if value == "auto" else positive_int(value)


def most_steps(value: str) -> int:
    """--max-steps: an integer no smaller than the points n_steps auto starts from."""
    from ..engine.adaptive import MIN_MAX_STEPS

    number = positive_int(value)
    if number < MIN_MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_MAX_STEPS} (the points n_steps auto starts from); "
                                         f"got {value!r}")
    return number


def fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {value!r}")
    return number


def answer_keys(value: str) -> list:
    """--outputs: comma-separated answer keys (checked against what a server may send by the command)."""
    return [name.strip() for name in value.split(",") if name.strip()]


def input_flags(parser) -> None:
    """The input and output flags (also the batch job's): INPUT, -o, --format, --column."""
    parser.add_argument("input", nargs="?", default="-",
                        help="text file (one sentence a line), .csv/.tsv or .jsonl file, or - for stdin (default)")
    parser.add_argument("-o", "--output", required=True, help="directory for the answers and index.jsonl (a rerun "
                                                               "with the same options does only what is missing)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the answers the output directory holds from a run with other options "
                             "(without it, such a directory is refused)")
    parser.add_argument("--format", choices=("text", "csv", "jsonl"),
                        help="input format (default: from the file name; stdin: text)")
    parser.add_argument("--column", help="CSV column or JSONL key holding the sentence "
                                         "(default: sequence, sentence or text)")


CLIENT_READS = ("tokens", "token_attributions", "logits")   # kept by the client's --outputs whatever it names
# What a request leaves out gets (a server's DEFAULT_OPTIONS, the engine's attribute; tests/client checks they agree).
DEFAULTS = {"target": 1, "n_steps": 50, "method": "gausslegendre", "baseline": "zero"}


def request_flags(parser, server: bool = True) -> None:
    """The request options (also the batch job's): --target, --n-steps (auto: with --tolerance and --max-steps),
    --method, --baseline, --precision, --dtype, --outputs; each left out is the default a server uses."""
    from ..answer.keys import DTYPE_NAMES, SENDABLE_NAMES
    from ..engine.adaptive import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE

    def default(name):   # a server may have been started with another (the launcher's --target, --n-steps, --method)
        return f"default {DEFAULTS[name]}" + (", or the server's own" if server and name != "baseline" else "")

    from ..engine.baselines import BASELINES
    from ..engine.precision import PRECISIONS
    from ..engine.quadrature import METHODS

    parser.add_argument("--target", type=_target, help="class whose logit is attributed, or 'predicted' "
                                                       f"({default('target')})")
    parser.add_argument("--n-steps", type=steps, help=f"quadrature steps ({default('n_steps')}), or auto "
                                                     "(the engine refines each sentence until --tolerance)")
    parser.add_argument("--tolerance", type=fraction, help="with --n-steps auto: the relative error aimed for "
                                                           f"(default {DEFAULT_TOLERANCE})")
    parser.add_argument("--max-steps", type=most_steps, help="with --n-steps auto: the most steps (default "
                                                               f"{DEFAULT_MAX_STEPS}" + (", or a server's --max-steps)" if server else ")"))
    parser.add_argument("--method", choices=METHODS, help=f"quadrature rule ({default('method')})")
    parser.add_argument("--baseline", choices=BASELINES, help=f"baseline ({default('baseline')})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="arithmetic of the model's passes (default float32)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="the answer's float tensors (default float32)")
    parser.add_argument("--outputs", type=answer_keys, metavar="NAMES",
                        help=f"comma-separated answer keys to keep, from {', '.join(SENDABLE_NAMES)} "
                             "(default: every key but the IDGI and endpoint ones"
                             + ("; the client adds tokens, token_attributions and logits, which it reads)" if server
                                else ")"))


def _send_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intgrads-client",
        usage="intgrads-client [send] [INPUT] -o DIR -u URL [options]\n"
              "       intgrads-client render ANSWER.gzip [-o out.png|out.html] [--top N]",
        description="Send sentences to intgrads servers; write one answer file per sentence and index.jsonl. "
                    "(`intgrads-client render ANSWER.gzip -o out.png|out.html` draws an answer.)")
    input_flags(parser)
    parser.add_argument("-u", "--url", action="append", required=True, metavar="URL",
                        help="predictions URL, e.g. http://127.0.0.1:8080/predictions/bert (repeat, or separate "
                             "with commas, for several servers: requests go round-robin)")
    request_flags(parser)
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help=f"inference key (default: ${TOKEN_ENV} if set)")
    auth.add_argument("--key-file", help="TorchServe's key_file.json: its inference key is used")
    parser.add_argument("-j", "--concurrency", type=positive_int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="tries after a 5xx or connection error (default 5; none when no URL "
                                                                   "has answered at all: no server there)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds, doubled each "
                                                                    "time (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer (default 300)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-handoff", action="store_true",
                        help="take answers as HTTP bodies even from a server on this machine (not as its files)")
    parser.add_argument("--rebuild", choices=REBUILD_CHOICES, default="remote",
                        help="whose bodies to take compact, x and b instead of the intermediates (about half the "
                             "bytes), rebuilt here into the same answer file: servers on other machines (default), "
                             "all, or none")
    parser.add_argument("--max-answer-bytes", type=positive_int, default=DEFAULT_MAX_ANSWER_BYTES, metavar="N",
                        help="the largest answer body taken from a server, in bytes (default 2 GiB); a larger one "
                             "is refused without reading it all")
    return parser


def read_input(args, program: str):
    """The ``(line, sentence)`` pairs of ``args.input`` (``--format``, ``--column``); None, once said why on
    stderr, when it cannot be read; an empty list, once said so, when it holds none."""
    try:
        sentences = read_sentences(args.input, format=args.format, column=args.column)
    except OSError as error:
        print(f"{program}: cannot read {args.input}: {error.strerror or error}", file=sys.stderr)
        return None
    except ValueError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return None
    if not sentences:
        print(f"{program}: no sentences in the input", file=sys.stderr)
    return sentences


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intgrads-client render",
                                     description="Draw an answer: token heatmap and accumulated attribution along "
                                                 "the path, as a PNG or a self-contained HTML page.")
    parser.add_argument("answer", help="answer file (.gzip) saved from the server")
    parser.add_argument("-o", "--output", help="out.png or out.html (default: the answer's name with .png)")
    parser.add_argument("--top", type=int, default=8, help="tokens named in the path panel's legend (default 8)")
    return parser


def main(argv=None) -> int:
    """Console entry point; returns the exit status (0 all answered, 1 some failed, 2 usage, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "render":
        return _main_render(argv[1:])
    if argv and argv[0] == "send":
        argv = argv[1:]
    return _main_send(argv)


def _main_render(argv) -> int:
    args = _render_parser().parse_args(argv)
    from ..answer.codec import load_answer
    from ..pictures import render_answer

    output = args.output or str(Path(args.answer).with_suffix(".png"))
    try:
        answer = load_answer(args.answer)
        render_answer(answer, output, top=args.top)
    except (OSError, ValueError, KeyError) as error:
        print(f"intgrads-client render: {error}", file=sys.stderr)
        return 2
    print(output)
    return 0


def _main_send(argv) -> int:
    parser = _send_parser()
    args = parser.parse_args(argv)
    if (args.tolerance is not None or args.max_steps is not None) and args.n_steps != "auto":
        parser.error("--tolerance and --max-steps go with --n-steps auto")
    from ..answer.keys import SENDABLE_NAMES

    unknown = [name for name in args.outputs or () if name not in SENDABLE_NAMES]
    if unknown or args.outputs == []:
        parser.error(f"--outputs: unknown answer key(s) {', '.join(map(repr, unknown)) or 'none given'}; outputs may "
                     f"name {', '.join(SENDABLE_NAMES)}")
    if args.outputs:   # what the client reads to check an answer and write its index record
        args.outputs += [name for name in CLIENT_READS if name not in args.outputs]
    urls = [url.strip() for value in args.url for url in value.split(",") if url.strip()]
    # every answer is inflated and loaded to be checked: reuse the last one's memory instead of faulting in fresh
    # pages (a third of the check's CPU at 48.8 MB); the heap stays at the largest answers' size
    from ..engine.memory import reuse_freed_memory, reuse_memory_wanted

    if reuse_memory_wanted(os.environ):
        reuse_freed_memory()
    try:
        client = Client(urls, token=args.token, key_file=args.key_file, retries=args.retries, backoff=args.backoff,
                        timeout=args.timeout, handoff=not args.no_handoff, rebuild=args.rebuild,
                        max_answer_bytes=args.max_answer_bytes)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    sentences = read_input(args, "intgrads-client")
    if not sentences:
        return 0 if sentences == [] else 2
    try:
        report = client.run(sentences, args.output, target=args.target, n_steps=args.n_steps, method=args.method,
                            baseline=args.baseline, precision=args.precision, tolerance=args.tolerance,
                            max_steps=args.max_steps, dtype=args.dtype, outputs=args.outputs,
                            concurrency=args.concurrency,
                            progress=not args.no_progress, overwrite=args.overwrite)
    except RunAborted as error:
        print(f"intgrads-client: {error}", file=sys.stderr)
        return 1
    except OutputBusy as error:
        print(f"intgrads-client: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nintgrads-client: interrupted; what was answered is in {Path(args.output) / INDEX_NAME}; "
              "run the same command again to go on", file=sys.stderr)
        return 130
    if client.handoff_fallbacks:
        print(f"intgrads-client: the server's answer files could not be taken, so answers came in the body "
              f"({client.handoff_fallbacks[0]})", file=sys.stderr)
    print_report("intgrads-client", report)
    return 1 if report.failed else 0
