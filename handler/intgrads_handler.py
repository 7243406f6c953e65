"""TorchServe handler for intgrads: thin glue over the engine (the ``intgrads`` package packed in the archive).

The archive's ``model-config.yaml`` carries, besides TorchServe's own keys, an ``intgrads:`` section written
by the launcher at archive time::

    intgrads:
      family: bert                 # bert | xlnet-base | xlnet-large | hf
      weights: weights/model.pth   # inside the archive (a directory for hf)
      config: config/config.json   # or null
      tokenizer: tokenizer         # or null (family default; hf: the weights directory)
      layer: null
      device: cpu                  # cpu | cuda (each worker then runs on its own gpu_id)
      torch_threads: 0             # 0: cores / workers
      defaults: {target: 1, n_steps: 50, method: gausslegendre, baseline: zero, ...}
      limits: {max_steps: 500, max_tokens: 512, max_sequences: 16, max_chars: 100000, max_response_bytes: ...,
               gzip_level: 1}   # 0: stored gzip (the launcher's default with --cuda)

Environment overrides (set by the launcher for a run): ``INTGRADS_TORCH_THREADS``, ``INTGRADS_MAX_RESPONSE_BYTES``;
``INTGRADS_REUSE_MEMORY=0`` keeps glibc's default memory handling (see ``intgrads.reuse_freed_memory``);
``INTGRADS_PIECE_BYTES`` sets the size of a streamed body's pieces (0: whole bodies, see ``PIECE_BYTES``).

Per request (see ``intgrads.serving.request``): ``{"sequence": "..."}`` plus optional options -> the engine's answer as
``intgrads.encode_answer`` bytes (``application/gzip``), or with ``Accept: application/json`` / the
``/explanations`` route a JSON summary. Every refused request gets its own 4xx status and a JSON
``{"error": ...}``; requests in a TorchServe batch each get their own answer or error. Those with the same
options share an engine call (``intgrads.serving.batching``): their answers equal the answers of the
requests sent alone to 1e-5, and at batch size 1 (the launcher's default) they are bitwise the engine's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

import intgrads
from intgrads.answer.keys import HANDOFF_HEADER, SENDABLE_NAMES, SUMMARY_HEADER
from intgrads.answer.summary import index_record
from intgrads.engine.budget import DeadlineExceeded, deadline_for, model_shape
from intgrads.engine.diagnostics import NON_FINITE
from intgrads.serving.batching import gather, plan_groups
from intgrads.serving.guards import check_answer_size, check_work, deadline_error, sentence_lengths, work_budget
from intgrads.serving.handoff import HandoffDir, HandoffFull
from intgrads.serving.request import DEFAULT_LIMITS, DEFAULT_OPTIONS, RequestError, lower_keys, parse_request
from intgrads.system import usable_cores

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"
GZIP_TYPE = "application/gzip"
# A gzip body over this size goes out in pieces of this size, as TorchServe's streamed (intermediate) responses:
# its frontend moves big single frames 1.5-4.5x slower per MB (docs/benchmarks.md, part 10).
# INTGRADS_PIECE_BYTES overrides it; 0 sends every body whole.
PIECE_BYTES = 2 * 1024 * 1024
LOAD_ERROR_MARKER = "INTGRADS_LOAD_ERROR"


def _read_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


class IntgradsHandler:
    """initialize / preprocess / inference / postprocess, driven by :meth:`handle`."""

    def __init__(self):
        self.initialized = False
        self.bundle = None
        self.context = None
        self.settings: dict = {}
        self.defaults = dict(DEFAULT_OPTIONS)
        self.limits = dict(DEFAULT_LIMITS)
        self.model_name = "MODEL"
        self.handoff: HandoffDir | None = None
        self.response_timeout = 1800.0
        self.work_budget: float | None = None    # G multiply-accumulates per request (None: no limit)

    # ------------------------------------------------------------------ initialize
    def initialize(self, context):
        self.context = context
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir") or ".")
        self.model_name = getattr(context, "model_name", None) or "MODEL"
        try:
            yaml_config = getattr(context, "model_yaml_config", None) or {}
            if not yaml_config.get("intgrads") and (model_dir / "model-config.yaml").is_file():
                yaml_config = _read_yaml(model_dir / "model-config.yaml")
            settings = yaml_config.get("intgrads")
            if not settings:
                raise ValueError("the archive's model-config.yaml has no 'intgrads' section: build the archive "
                                 "with the intgrads launcher")
            self.settings = settings
            self.defaults.update({k: v for k, v in (settings.get("defaults") or {}).items() if k in DEFAULT_OPTIONS})
            self.limits.update({k: v for k, v in (settings.get("limits") or {}).items() if k in DEFAULT_LIMITS})
            if os.environ.get("INTGRADS_MAX_RESPONSE_BYTES"):
                self.limits["max_response_bytes"] = int(os.environ["INTGRADS_MAX_RESPONSE_BYTES"])

            self.handoff = HandoffDir.from_environment()
            if os.environ.get("INTGRADS_REUSE_MEMORY", "1") != "0":
                intgrads.reuse_freed_memory()
            device = self._device(settings, properties)
            threads = self._threads(settings, yaml_config, device)
            torch.set_num_threads(threads)
            self.response_timeout = float(yaml_config.get("responseTimeout") or 1800)
            self.work_budget = work_budget(self.limits.get("max_work"), self.response_timeout, device, threads)

            def inside(name):
                value = settings.get(name)
                if not value:
                    return None
                root = model_dir.resolve()
                if root not in (model_dir / value).resolve().parents:   # "../x" or a link leading out of the archive
                    raise ValueError(f"the archive's {name} path {value!r} leads outside the archive: not followed")
                return str(model_dir / value)

            started = time.time()
            self.bundle = intgrads.load_model(settings["family"], inside("weights"), config=inside("config"),
                                              tokenizer=inside("tokenizer") or settings.get("tokenizer_name"),
                                              device=device, layer=settings.get("layer"))
            logger.info("intgrads: model %s (%s, %s layout, layer %s) loaded on %s with %d torch threads in %.1f s "
                        "(engine %s)", self.model_name, self.bundle.family, self.bundle.layout, self.bundle.layer_name,
                        device, threads, time.time() - started, Path(intgrads.__file__).parent)
        except Exception as error:  # noqa: BLE001 - the launcher looks for this line in the model log
            message = f"{type(error).__name__}: {error}".replace("\n", " ")
            logger.error("%s model=%s %s", LOAD_ERROR_MARKER, self.model_name, message)
            raise
        self.initialized = True

    @staticmethod
    def _device(settings, properties) -> str:
        gpu_id = properties.get("gpu_id")
        if settings.get("device", "cpu") == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("this model was archived for --cuda but torch sees no CUDA device in the worker")
            index = int(gpu_id) if gpu_id is not None else 0
            torch.cuda.set_device(index)
            return f"cuda:{index}"
        return "cpu"

    @staticmethod
    def _threads(settings, yaml_config, device) -> int:
        value = os.environ.get("INTGRADS_TORCH_THREADS") or settings.get("torch_threads") or 0
        threads = int(value)
        if threads <= 0:
            workers = max(1, int(yaml_config.get("minWorkers") or 1))
            threads = max(1, usable_cores() // workers)
        return threads

    # ------------------------------------------------------------------ request cycle
    def preprocess(self, data, context):
        """One entry per request: a parsed :class:`intgrads.serving.request.Request` or a :class:`RequestError`."""
        parsed = []
        for index, parts in enumerate(data):
            headers = self._headers(context, index)
            explain = str(headers.get("explain", "")).lower() == "true"
            try:
                request = parse_request(parts, headers, model_name=self.model_name,
                                        num_labels=self.bundle.num_labels, defaults=self.defaults,
                                        limits=self.limits, explain=explain)
                lengths = request.lengths = sentence_lengths(self.bundle, request.sequences, self._max_tokens())
                if not request.want_json:
                    check_answer_size(request, lengths, int(self.bundle.word_embedding.weight.shape[1]),
                                      int(self.limits["max_response_bytes"]))
                check_work(request, lengths, self.bundle.model, self.work_budget, self.response_timeout)
                parsed.append(request)
            except RequestError as error:
                parsed.append(error)
            except Exception as error:  # noqa: BLE001 - one unreadable request must not fail the others in its batch
                logger.exception("intgrads: could not read a request")
                parsed.append(RequestError(f"could not read the request: {type(error).__name__}: {error}"))
        return parsed

    @staticmethod
    def _headers(context, index) -> dict:
        try:
            return lower_keys(context.get_all_request_header(index))
        except Exception:  # noqa: BLE001 - no headers known (e.g. a bare Context)
            return {}

    def _max_tokens(self) -> int:
        limit = int(self.limits["max_tokens"])
        positions = self.bundle.max_positions
        return min(limit, positions) if positions else limit

    def inference(self, requests, context):
        """Run the engine for the batch's requests: those sharing their options in one call (see
        ``intgrads.serving.batching``), the others one by one; an engine refusal becomes that request's 4xx."""
        deadline = deadline_for(time.monotonic(), self.response_timeout)   # TorchServe's clock runs for the batch
        results = list(requests)
        valid = {i: request for i, request in enumerate(requests) if not isinstance(request, RequestError)}
        together = self._run_together(valid, deadline) if len(valid) > 1 else {}
        for position, request in valid.items():
            results[position] = together.get(position) or self._run_one(request, deadline)
        return results

    def _engine_options(self, options: dict, deadline) -> dict:
        chunk = self.limits.get("chunk_tokens")   # 0 or None (--chunk-tokens 0): every step at once
        return {**options, "max_tokens": self._max_tokens(), "chunk_tokens": int(chunk) if chunk else None,
                "deadline": deadline}

    def _run_together(self, requests: dict, deadline) -> dict:
        """{position: (request, answer, engine seconds) or RequestError} for the requests that shared an engine
        call with others of the same options; those of a call that failed otherwise than by the deadline are
        left out, to run on their own (and meet their own error)."""
        out = {}
        for group in plan_groups(requests):
            started = time.perf_counter()
            try:
                items = intgrads.attribute(self.bundle, group.sentences(requests),
                                           **self._engine_options(group.options, deadline))
            except DeadlineExceeded as error:
                self._free_memory()
                out.update({position: deadline_error(error, self.response_timeout) for position in group.positions})
                continue
            except Exception as error:  # noqa: BLE001 - each request then runs alone
                self._free_memory()
                logger.warning("intgrads: %d request(s) run together failed (%s: %s); each runs alone",
                               len(group.positions), type(error).__name__, error)
                continue
            elapsed = time.perf_counter() - started
            answers = dict(zip(group.items, items))
            tokens = {position: sum(requests[position].lengths) for position in group.positions}
            for position in group.positions:
                request = requests[position]
                answer = gather(request, answers, position)
                try:
                    _refuse_non_finite(answer)
                    out[position] = (request, answer, elapsed * tokens[position] / max(1, sum(tokens.values())))
                except RequestError as error:
                    out[position] = error
            logger.info("intgrads: %d request(s) of the batch run together", len(group.positions))
        return out

    def _run_one(self, request, deadline):
        started = time.perf_counter()
        try:
            answer = intgrads.attribute(self.bundle, request.sequences[0] if request.single else request.sequences,
                                        **self._engine_options(request.options, deadline))
            _refuse_non_finite(answer)
        except RequestError as error:
            return error
        except DeadlineExceeded as error:
            self._free_memory()
            return deadline_error(error, self.response_timeout)
        except ValueError as error:
            return RequestError(str(error))
        except torch.cuda.OutOfMemoryError:
            self._free_memory()
            return RequestError("out of GPU memory for this request: ask for fewer n_steps, set "
                                "internal_batch_size, or send shorter text", status=507)
        except MemoryError:
            return RequestError("out of memory for this request: ask for fewer n_steps, set "
                                "internal_batch_size, or send shorter text", status=507)
        except Exception as error:  # noqa: BLE001 - one request's failure must not kill the worker
            logger.exception("intgrads: request failed")
            return RequestError(f"internal error: {type(error).__name__}: {error}", status=500)
        seconds = time.perf_counter() - started
        logger.info("intgrads: %d sentence(s), %s steps, %s in %.2f s", len(request.sequences),
                    request.options["n_steps"], request.options["method"], seconds)
        return request, answer, seconds

    def _free_memory(self):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def postprocess(self, results, context):
        """Bytes per request, with its own status and content type."""
        out = []
        for index, result in enumerate(results):
            try:
                if isinstance(result, RequestError):
                    out.append(self._error(context, index, result))
                    self._metrics(context, index, result.status)
                    continue
                request, answer, engine_seconds = result
                encode_started = time.perf_counter()
                body, answer_bytes = self._answer(context, index, request, answer)
                encode_seconds = time.perf_counter() - encode_started
                self._timing_headers(context, index, engine_seconds, encode_seconds)
                out.append(_send_in_pieces(context, index, body) if isinstance(body, bytes) else body)
                items = answer if isinstance(answer, list) else [answer]
                self._metrics(context, index, 200, IntgradsEngineSeconds=engine_seconds,
                              IntgradsEncodeSeconds=encode_seconds,
                              IntgradsTokenSteps=sum(len(item["tokens"]) * item["n_steps"] for item in items),
                              IntgradsAnswerBytes=answer_bytes,
                              IntgradsWarnings=sum(len(item.get("warnings", ())) for item in items))
            except RequestError as error:
                out.append(self._error(context, index, error))
                self._metrics(context, index, error.status)
            except Exception as error:  # noqa: BLE001
                logger.exception("intgrads: could not encode the answer")
                out.append(self._error(context, index, RequestError(
                    f"internal error while encoding the answer: {type(error).__name__}: {error}", status=500)))
                self._metrics(context, index, 500)
        return out

    def _metrics(self, context, index, status, **counters):
        """IntgradsRequests{Status} and, for an answer, its counters, as TorchServe metrics (Prometheus text on
        the metrics port). A context without metrics (a bare Context) records nothing."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        try:
            from ts.metrics.dimension import Dimension

            def dims(*extra):
                return [Dimension("ModelName", self.model_name), Dimension("Level", "Model"), *extra]

            metrics.add_counter("IntgradsRequests", 1, idx=index, dimensions=dims(Dimension("Status", str(status))))
            for name, value in counters.items():
                metrics.add_counter(name, value, idx=index, dimensions=dims())
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            logger.debug("intgrads: metrics not recorded", exc_info=True)

    def _answer(self, context, index, request, answer):
        """(body, answer bytes): the JSON summary, the gzip answer in the body, or (hand-off) the gzip answer written
        as a file on this machine and a small JSON naming it. A one-sentence answer's index record rides in
        X-Intgrads-Summary."""
        if request.single:
            record = index_record(intgrads.summarize_answer(answer))
            self._header(context, index, SUMMARY_HEADER, json.dumps(record, ensure_ascii=True, allow_nan=True))
        if request.want_json:
            summary = (intgrads.summarize_answer(answer) if request.single
                       else [intgrads.summarize_answer(item) for item in answer])
            self._set(context, index, 200, "OK", JSON_TYPE)
            body = json.dumps(summary)
            return body, len(body)
        encoding = request.encoding or {}
        dtype = encoding.get("dtype")
        payload = intgrads.encode_answer(answer, outputs=encoding.get("outputs"),
                                         dtype=None if dtype in (None, "float32") else dtype,
                                         level=int(self.limits.get("gzip_level", 1)))
        if not (request.handoff and self.handoff is not None):
            self._set(context, index, 200, "OK", GZIP_TYPE)
            return payload, len(payload)
        try:
            path = self.handoff.put(payload)
        except HandoffFull as error:
            raise RequestError(str(error), status=507) from None
        self._set(context, index, 200, "OK", JSON_TYPE)
        self._header(context, index, HANDOFF_HEADER, str(path))
        return json.dumps({"file": str(path), "bytes": len(payload)}), len(payload)

    @staticmethod
    def _header(context, index, name, value):
        if context is None:
            return
        try:
            context.set_response_header(index, name, value)
        except Exception:  # noqa: BLE001 - a bare Context without request processors
            pass

    def _error(self, context, index, error: RequestError) -> str:
        self._set(context, index, error.status, error.message[:200], JSON_TYPE)
        return json.dumps(error.to_json())

    @staticmethod
    def _timing_headers(context, index, engine_seconds, encode_seconds):
        """X-Intgrads-Engine-Ms / X-Intgrads-Encode-Ms: the worker's own time for this request."""
        if context is None:
            return
        try:
            context.set_response_header(index, "X-Intgrads-Engine-Ms", f"{engine_seconds * 1e3:.1f}")
            context.set_response_header(index, "X-Intgrads-Encode-Ms", f"{encode_seconds * 1e3:.1f}")
        except Exception:  # noqa: BLE001 - a bare Context without request processors
            pass

    @staticmethod
    def _set(context, index, status, phrase, content_type):
        if context is None:
            return
        try:
            context.set_response_status(status, _phrase(phrase), index)
            context.set_response_content_type(index, content_type)
        except Exception:  # noqa: BLE001 - a bare Context without request processors
            pass

    def handle(self, data, context):
        if not self.initialized:
            self.initialize(context)
        if data is None:
            return None
        self.context = context
        if _header(context, 0, "describe") == "True":   # GET /models/NAME?customized=true
            return [json.dumps(self.describe())]
        logger.info("intgrads: batch of %d request(s)", len(data))
        return self.postprocess(self.inference(self.preprocess(data, context), context), context)

    def describe(self) -> dict:
        """What TorchServe's describe call (``customized=true``) shows as customizedMetadata."""
        layers, hidden = model_shape(self.bundle.model)
        return {"family": self.bundle.family, "layout": self.bundle.layout, "layer": self.bundle.layer_name,
                "activation": self.bundle.activation, "device": str(self.bundle.device), "layers": layers,
                "hidden": hidden, "num_labels": self.bundle.num_labels, "labels": list(self.bundle.label_names),
                "max_positions": self.bundle.max_positions, "defaults": dict(self.defaults),
                "limits": {**{k: v for k, v in self.limits.items() if k != "max_work"},
                           "max_work_gmac": self.work_budget, "response_timeout_s": self.response_timeout},
                "outputs": list(SENDABLE_NAMES), "methods": list(intgrads.METHODS),
                "baselines": list(intgrads.BASELINES), "precisions": list(intgrads.PRECISIONS)}


def _header(context, index, name):
    try:
        return context.get_request_header(index, name)
    except Exception:  # noqa: BLE001 - a bare Context without request processors
        return None


def _piece_bytes() -> int:
    try:
        return int(os.environ.get("INTGRADS_PIECE_BYTES", PIECE_BYTES))
    except ValueError:
        return PIECE_BYTES


def _send_in_pieces(context, index, payload: bytes) -> bytes:
    """All of a gzip body but its last piece sent now, each as one of TorchServe's intermediate responses (one
    frame to the frontend, one HTTP chunk to the client); returns the last piece, the request's final response.
    The status and headers, set before, go out with the first piece. Bodies of one piece, a bare Context and
    KServe's envelope (which wraps the final response) get the whole body back."""
    piece = _piece_bytes()
    if (piece <= 0 or len(payload) <= piece or os.environ.get("TS_SERVICE_ENVELOPE")
            or getattr(context, "cl_socket", None) is None or index not in (context.request_ids or {})):
        return payload
    from ts.protocol.otf_message_handler import send_intermediate_predict_response

    ids, view = {index: context.request_ids[index]}, memoryview(payload)
    starts = range(0, len(payload), piece)
    for start in starts[:-1]:
        send_intermediate_predict_response({index: bytes(view[start:start + piece])}, ids,
                                           "Intermediate Prediction success", 200, context)
    return bytes(view[starts[-1]:])


def _refuse_non_finite(answer):
    """An answer with NaN or infinity is not sent: 422 naming the sentence and what to try."""
    for index, item in enumerate(answer if isinstance(answer, list) else [answer]):
        for warning in item.get("warnings", []):
            if warning.startswith(NON_FINITE):
                where = "" if not isinstance(answer, list) else f"sequences[{index}]: "
                raise RequestError(f"{where}{warning}", status=422)


def _phrase(text: str) -> str:
    """HTTP reason phrases are one line of visible ASCII."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text.replace("\n", " "))
    return cleaned or "Error"


_service = IntgradsHandler()


def handle(data, context):
    """TorchServe's function entry point: initialize on the first call (data is None), then answer."""
    if not _service.initialized:
        _service.initialize(context)
        if data is None:
            return None
    return _service.handle(data, context)
