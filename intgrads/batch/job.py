"""The driver of a batch run: the output directory, the cluster, and the Ray Data pipeline between them.

    sentences not yet answered ──► Ray Data (blocks of --batch-size rows) ──► AnswerWriter actors, one per
    worker slot, each writing NNNNNN.gzip into the output ──► one small row per sentence (line, index record)
    ──► the driver appends it to index.jsonl and moves the progress bar

The output directory is held as ``intgrads-client`` holds it (``intgrads.client.index.open_output``: the lock,
what is already answered is skipped, the index rewritten at the end), so a rerun computes only what is missing,
and a client and a batch run can take turns on the same directory. The cluster is stopped (its own) or left (a
joined one) before the index is rewritten and the lock removed, so no worker writes after the run has ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from ..client.index import open_output, remove_own_temporaries, usable_output
from ..client.report import RunReport, advance, progress_bar
from . import cluster
from .adopt import recover
from .plan import Layout, cluster_layout, local_layout

PROGRAM = "intgrads-batch"
# Up to this many tasks, the driver makes the blocks itself (~1.3 ms each on 2 cores); beyond, a streaming repartition
# cuts them (~10 ms of CPU per task more). INTGRADS_BATCH_DIRECT_BLOCKS changes it (0: always the repartition).
DIRECT_BLOCKS = int(os.environ.get("INTGRADS_BATCH_DIRECT_BLOCKS", 1000))


class WorkersFailed(RuntimeError):
    """The pipeline stopped: the workers could not start (a model file no node can read, intgrads missing on a
    node...) or Ray itself failed."""


def run(args, job: dict, items: list, options: dict) -> RunReport:
    """Answer ``items`` (``(line, sentence)``) into ``args.output`` with ``job`` (the workers' settings, see
    :class:`~intgrads.batch.worker.AnswerWriter`); returns the run's report. Raises ``OutputBusy``,
    :class:`WorkersFailed`, :class:`~intgrads.batch.cluster.JoinError` or KeyboardInterrupt (after cleaning up)."""
    output = usable_output(args.output)
    with open_output(output, items, options, program=PROGRAM, overwrite=args.overwrite) as done:
        recovered = recover(done, options)
        report = RunReport(output=output, total=len(items), skipped=len(items) - len(done.todo))
        if recovered:
            _say(args, f"{recovered} answer file(s) of an interrupted run taken into the index")
        started = time.monotonic()
        try:
            if done.todo:
                with _cluster(args, output, math.ceil(len(done.todo) / args.batch_size)) as layout:
                    _say(args, f"{len(done.todo)} sentence(s) to answer ({report.skipped} already there), "
                               f"{layout.describe(job['device'])}")
                    _pipeline({**job, "output": str(output), "threads": layout.threads}, layout, done, report,
                              args)
        finally:
            report.seconds = time.monotonic() - started
            remove_own_temporaries(output)   # what workers stopped mid-write left (the cluster is gone by now)
    return report


@contextlib.contextmanager
def _cluster(args, output: Path, tasks: int):
    """The workers' :class:`Layout` (no more workers than ``tasks``), the driver connected to the cluster; its own
    head stopped (or a joined cluster left) on the way out."""
    if args.ray_address:
        cluster.token_settings(args.ray_token_file)
        try:
            yield cluster_layout(args, cluster.connect(args.ray_address, args.ray_timeout), tasks)
        finally:
            cluster.disconnect()
        return
    layout, cpus, gpus = local_layout(args)
    with cluster.own_head(cpus=cpus, gpus=gpus, output=output, quiet=args.no_progress) as address:
        cluster.connect(address)
        yield dataclasses.replace(layout, workers=min(layout.workers, tasks))


def _pipeline(job: dict, layout: Layout, done, report: RunReport, args) -> None:
    import ray
    import ray.data

    from .worker import AnswerWriter

    logging.getLogger("ray.data").setLevel(logging.ERROR)   # its notices would break the progress bar
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = args.batch_size
    todo = sorted(done.todo, key=lambda item: len(item[1])) if rows > 1 else done.todo   # buckets of similar length
    dataset = _sentences(ray.data, todo, rows)
    dataset = dataset.map_batches(
        AnswerWriter, fn_constructor_kwargs={"job": job}, batch_size=rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=layout.workers), num_cpus=layout.cpus, num_gpus=layout.gpus)
    bar = progress_bar(len(todo), not args.no_progress, desc=PROGRAM)
    try:
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            done.add(record)
            report.count(record)
            advance(bar, report)
    except ray.exceptions.RayError as error:
        raise WorkersFailed(f"the workers stopped: {_cause(error)}" + (
            "" if not args.ray_address else " (on a cluster, every node needs intgrads installed, and the model "
            "files and the output directory on a filesystem it sees)")) from None
    finally:
        if bar is not None:
            bar.close()


def _sentences(data, todo: list, rows: int):
    """The dataset of ``todo``, in blocks of ``rows`` sentences, a task each: made so in the driver up to
    DIRECT_BLOCKS blocks (no Ray Data task needed between the input and the workers); beyond, cut as they stream
    (a repartition, whose small tasks take the head's spare CPU)."""
    items = [{"line": line, "sentence": sentence} for line, sentence in todo]
    blocks = math.ceil(len(items) / rows)
    if blocks <= DIRECT_BLOCKS:
        return data.from_items(items, override_num_blocks=blocks)
    return data.from_items(items).repartition(target_num_rows_per_block=rows)


def _cause(error) -> str:
    """The last exception line in a Ray error's text (the worker's own error, e.g. the model file not found)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return (found or lines or [type(error).__name__])[-1][:500]


def _say(args, text: str) -> None:
    if not args.no_progress:
        print(f"{PROGRAM}: {text}", file=sys.stderr, flush=True)
