"""The worker of a batch run: one Ray Data actor per worker slot.

It loads the model once and answers its batches exactly as a server does, through the same
:class:`~intgrads.serving.service.AttributionService`: each sentence is the request ``{"sequence": ..., options}``,
so it meets the same checks and messages, and an answer is the server's answer to that request, byte for byte.
It writes each answer file straight into the output directory (``NNNNNN.gzip.tmp``, fsync, then the rename) and
hands back one small row per sentence: its line and its index record (the fields ``intgrads-client`` records, or
the error and its status). A sentence that fails is a record like any other; nothing a sentence does stops the run.

A batch of one sentence runs alone (the server at batch size 1). A batch of several runs them together, as the
server runs a batch's requests of the same options: one engine call, cut into buckets of similar length.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..answer.keys import SUMMARY_HEADER
from ..client.index import sentence_fields, write_atomically
from ..client.inputs import prompt_request
from ..serving.request import RequestError
from ..serving.service import AttributionService, Incoming

HEADERS = {"content-type": "application/json", "accept": "application/gzip"}
NO_TIMEOUT = float("inf")   # no HTTP client waits: no deadline, no work budget


class AnswerWriter:
    """Ray Data's callable class: ``AnswerWriter(job)(batch) -> rows``.

    ``job`` (JSON-able, from :func:`intgrads.batch.plan.worker_job`): ``model`` (family, weights, config, tokenizer,
    name), ``device``, ``threads``, ``output``, ``fields`` (the request's options and encoding), ``options`` (the
    index's record of them), ``limits`` and ``no_truncate``."""

    def __init__(self, job: dict):
        import torch

        from ..engine.memory import reuse_freed_memory, reuse_memory_wanted
        from ..engine.models import load_model

        if reuse_memory_wanted(os.environ):
            reuse_freed_memory()
        torch.set_num_threads(int(job["threads"]))
        model = job["model"]
        bundle = load_model(model["family"], model["weights"], config=model.get("config"),
                            tokenizer=model.get("tokenizer"), device=job["device"])
        self.service = AttributionService(bundle, model_name=model["name"], limits=job["limits"],
                                          response_timeout=NO_TIMEOUT, device=job["device"],
                                          threads=int(job["threads"]))
        self.output = Path(job["output"])
        self.fields = dict(job["fields"])
        self.options = dict(job["options"])
        self.no_truncate = bool(job.get("no_truncate"))
        self.node = _node_id()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        lines = [int(line) for line in batch["line"]]
        sentences = [str(sentence) for sentence in batch["sentence"]]
        parsed = [self._parse(sentence) for sentence in sentences]
        replies: dict = {}
        self.service.run(parsed, lambda done, more: replies.update(done) or True)
        records = [self._keep(line, sentence, replies[position])
                   for position, (line, sentence) in enumerate(zip(lines, sentences))]
        return {"line": np.array(lines, dtype=np.int64),
                "record": np.array([json.dumps(record, ensure_ascii=False) for record in records], dtype=object)}

    def _parse(self, sentence: str):
        """The checked request of ``sentence`` (the server's :meth:`~AttributionService.parse`), or its error;
        with ``no_truncate``, a sentence longer than the run reads is an error too (a server truncates it)."""
        prompt = prompt_request(sentence)   # a causal LM line's fields (intgrads.client.inputs.PromptRequest)
        fields = {**self.fields, **prompt.fields} if prompt is not None else {"sequence": sentence, **self.fields}
        body = json.dumps(fields).encode("utf-8")
        request = self.service.parse(Incoming({"body": body}, dict(HEADERS)))
        if self.no_truncate and prompt is None and not isinstance(request, RequestError):
            full = len(self.service.bundle.tokenizer(sentence, add_special_tokens=True)["input_ids"])
            limit = self.service.max_tokens()
            if full > limit:
                return RequestError(f"the sentence has {full} tokens, more than the {limit} this run reads "
                                    "(--max-tokens, at most the model's positions); with --no-truncate it is not cut: "
                                    "shorten it, or raise --max-tokens", status=413)
        return request

    def _keep(self, line: int, sentence: str, reply) -> dict:
        """Write the answer of ``reply`` into its file; the sentence's index record (or its error's)."""
        started = time.perf_counter()
        record = {"line": line, **sentence_fields(sentence)}
        if reply.status == 200:
            name = f"{line:06d}.gzip"
            try:
                write_atomically(self.output / name, reply.body)
                fields = json.loads(reply.headers[SUMMARY_HEADER])
            except (OSError, KeyError, ValueError) as error:
                return self._failed(record, f"the answer could not be written into {self.output}: {error}", None,
                                    started)
            seconds = (float(reply.headers.get("X-Intgrads-Engine-Ms", 0)) + float(
                reply.headers.get("X-Intgrads-Encode-Ms", 0))) / 1e3 + time.perf_counter() - started
            record.update(file=name, **fields, seconds=round(seconds, 4), attempts=1, url=None, options=self.options,
                          node=self.node)
            return record
        return self._failed(record, reply.message, reply.status, started)

    def _failed(self, record: dict, message: str, status, started: float) -> dict:
        record.update(file=None, error=message, status=status, seconds=round(time.perf_counter() - started, 4),
                      attempts=1, url=None, options=self.options, node=self.node)
        return record


def _node_id() -> str | None:
    """The Ray node this worker runs on (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return None
