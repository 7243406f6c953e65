"""TorchServe handler for intgrads: glue between TorchServe and :class:`intgrads.serving.service.AttributionService`
(the ``intgrads`` package packed in the archive), which does everything that is not TorchServe's.

The archive's ``model-config.yaml`` carries, besides TorchServe's own keys, an ``intgrads:`` section written by
the launcher (``intgrads.launcher.archive.archive_settings``: family, weights, config, tokenizer, device, torch
threads, request defaults and limits). Environment set by the launcher for a run: ``INTGRADS_TORCH_THREADS``,
``INTGRADS_MAX_RESPONSE_BYTES``, the hand-off directory (``INTGRADS_HANDOFF_*``); ``INTGRADS_REUSE_MEMORY=0``
keeps glibc's default memory handling; ``INTGRADS_PIECE_BYTES`` sizes a streamed body's pieces (0: whole).

Each request of a TorchServe batch becomes an ``Incoming`` (its parts and headers; TorchServe does not pass the
query string), the service runs the batch unit by unit, and each reply is set on the context (status, content
type, headers) and counted as TorchServe metrics. While other units of the batch still have to run, a finished
unit's answers go out at once as TorchServe's streamed (intermediate) responses: TorchServe times each message
from the worker, so the next unit gets a response timeout of its own. Errors wait for the batch's end
(TorchServe closes a streamed response of status 400 or more after its head). Big gzip bodies go out in pieces
the same way (its frontend moves big single frames 1.5-4.5x slower per MB, docs/benchmarks.md, part 10).
KServe's envelope wraps only the final response: there the batch shares one timeout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

import intgrads.serving.service as service_module
from intgrads.serving.request import lower_keys
from intgrads.serving.service import AttributionService, Incoming
from intgrads.system import usable_cores

logger = logging.getLogger(__name__)
LOAD_ERROR_MARKER = "INTGRADS_LOAD_ERROR"


class IntgradsHandler:
    """initialize once per worker, then :meth:`handle` each batch."""

    def __init__(self):
        self.initialized = False
        self.service: AttributionService | None = None
        self.model_name = "MODEL"

    def initialize(self, context):
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir") or ".")
        self.model_name = getattr(context, "model_name", None) or "MODEL"
        try:
            yaml_config = getattr(context, "model_yaml_config", None) or {}
            if not yaml_config.get("intgrads") and (model_dir / "model-config.yaml").is_file():
                import yaml

                yaml_config = yaml.safe_load((model_dir / "model-config.yaml").read_text(encoding="utf-8")) or {}
            settings = yaml_config.get("intgrads")
            if not settings:
                raise ValueError("the archive's model-config.yaml has no 'intgrads' section: build the archive "
                                 "with the intgrads launcher")
            device = _device(settings, properties)
            threads = _threads(settings, yaml_config)
            torch.set_num_threads(threads)
            started = time.time()
            self.service = AttributionService.from_archive(
                settings, model_dir, model_name=self.model_name, device=device, threads=threads,
                response_timeout=float(yaml_config.get("responseTimeout") or 1800))
            bundle = self.service.bundle
            logger.info("intgrads: model %s (%s, %s layout, layer %s) loaded on %s with %d torch threads in %.1f s "
                        "(engine %s)", self.model_name, bundle.family, bundle.layout, bundle.layer_name, device,
                        threads, time.time() - started, Path(service_module.__file__).parents[1])
        except Exception as error:  # noqa: BLE001 - the launcher looks for this line in the model log
            message = f"{type(error).__name__}: {error}".replace("\n", " ")
            logger.error("%s model=%s %s", LOAD_ERROR_MARKER, self.model_name, message)
            raise
        self.initialized = True

    def handle(self, data, context):
        if not self.initialized:
            self.initialize(context)
        if data is None:
            return None
        if _request_header(context, 0, "describe") == "True":   # GET /models/NAME?customized=true
            return [json.dumps(self.service.describe())]
        logger.info("intgrads: batch of %d request(s)", len(data))
        parsed = []
        for index, parts in enumerate(data):
            headers = _headers(context, index)
            explain = str(headers.get("explain", "")).lower() == "true"   # the /explanations route
            parsed.append(self.service.parse(Incoming(parts, headers, explain=explain)))
        streams = _can_stream(context)
        out = [b""] * len(data)

        def deliver(replies, more) -> bool:
            sent = False
            for index, reply in replies:
                _set(context, index, reply)
                _count(context, index, self.model_name, reply)
                pieces = reply.pieces() if streams else [reply.body]
                if more and streams and reply.status < 400:
                    # the batch goes on: this reply leaves now, its request's final response is empty (an error
                    # can't: TorchServe closes a streamed response whose status is 400 or more after its head)
                    pieces = pieces + [b""]
                for piece in pieces[:-1]:
                    _send_now(context, index, piece)
                    sent = True
                out[index] = pieces[-1]
            return sent

        self.service.run(parsed, deliver)
        return out

def _device(settings, properties) -> str:
    gpu_id = properties.get("gpu_id")
    if settings.get("device", "cpu") == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("this model was archived for --cuda but torch sees no CUDA device in the worker")
        index = int(gpu_id) if gpu_id is not None else 0
        torch.cuda.set_device(index)
        return f"cuda:{index}"
    return "cpu"


def _threads(settings, yaml_config) -> int:
    threads = int(os.environ.get("INTGRADS_TORCH_THREADS") or settings.get("torch_threads") or 0)
    if threads <= 0:
        workers = max(1, int(yaml_config.get("minWorkers") or 1))
        threads = max(1, usable_cores() // workers)
    return threads


def _headers(context, index) -> dict:
    try:
        return lower_keys(context.get_all_request_header(index))
    except Exception:  # noqa: BLE001 - no headers known (e.g. a bare Context)
        return {}


def _request_header(context, index, name):
    try:
        return context.get_request_header(index, name)
    except Exception:  # noqa: BLE001 - a bare Context without request processors
        return None


def _can_stream(context) -> bool:
    """TorchServe's streamed responses reach the client (not under KServe's envelope, not a bare Context)."""
    return (not os.environ.get("TS_SERVICE_ENVELOPE") and getattr(context, "cl_socket", None) is not None
            and bool(getattr(context, "request_ids", None)))


def _set(context, index, reply):
    try:
        context.set_response_status(reply.status, reply.phrase, index)
        context.set_response_content_type(index, reply.content_type)
        for name, value in reply.headers.items():
            context.set_response_header(index, name, value)
    except Exception:  # noqa: BLE001 - a bare Context without request processors
        pass


def _send_now(context, index, piece: bytes):
    """One piece of request ``index``'s body, sent now as TorchServe's intermediate response (one frame to the
    frontend, one HTTP chunk to the client; the status and headers go with the first)."""
    from ts.protocol.otf_message_handler import send_intermediate_predict_response

    send_intermediate_predict_response({index: piece}, {index: context.request_ids[index]},
                                       "Intermediate Prediction success", 200, context)


def _count(context, index, model_name, reply):
    """IntgradsRequests{Status} and an answer's counters, as TorchServe metrics (Prometheus text on the metrics
    port). A context without metrics (a bare Context) records nothing."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        from ts.metrics.dimension import Dimension

        def dims(*extra):
            return [Dimension("ModelName", model_name), Dimension("Level", "Model"), *extra]

        metrics.add_counter("IntgradsRequests", 1, idx=index, dimensions=dims(Dimension("Status", str(reply.status))))
        for name, value in reply.counters.items():
            metrics.add_counter(name, value, idx=index, dimensions=dims())
    except Exception:  # noqa: BLE001 - metrics must never fail a request
        logger.debug("intgrads: metrics not recorded", exc_info=True)


_service = IntgradsHandler()


def handle(data, context):
    """TorchServe's function entry point: initialize on the first call (data is None), then answer."""
    if not _service.initialized:
        _service.initialize(context)
        if data is None:
            return None
    return _service.handle(data, context)
