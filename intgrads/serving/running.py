"""Running the engine for a server: one request alone, or a unit of requests together, each failure turned into
its own status (``RequestError``) so that nothing a request does ends the worker.

A result is ``(request, answer, engine seconds)`` or a :class:`~intgrads.serving.request.RequestError`:

- the engine's refusal of an option (``ValueError``): 400 with its message;
- past the deadline (``DeadlineExceeded``): 504, the worker free at once;
- out of GPU or host memory: 507, saying what to ask for instead;
- anything else: 500 with the error's name, logged with its traceback.

Requests run together share one ``attribute`` call; each gets the engine time of the call in proportion to its
tokens. When the call fails otherwise than by the deadline, each of them runs alone (and meets its own error).
"""

from __future__ import annotations

import logging
import time

import torch

from ..engine.attribution import attribute
from ..engine.budget import DeadlineExceeded
from ..engine.causal_answer import attribute_lm
from .batching import gather
from .guards import deadline_error
from .request import RequestError

logger = logging.getLogger(__name__)
SMALLER = "ask for fewer n_steps, set internal_batch_size, or send shorter text"


def _free_memory():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_alone(service, request, deadline):
    """Request ``request`` through the engine on its own."""
    started = time.perf_counter()
    try:
        if service.causal:
            answer = attribute_lm(service.bundle, request.sequences[0] if request.sequences else None,
                                  **service.engine_options(request.options, deadline))
        else:
            answer = attribute(service.bundle, request.sequences[0] if request.single else request.sequences,
                               **service.engine_options(request.options, deadline))
    except DeadlineExceeded as error:
        _free_memory()
        return deadline_error(error, service.response_timeout)
    except ValueError as error:
        return RequestError(str(error))
    except torch.cuda.OutOfMemoryError:
        _free_memory()
        return RequestError(f"out of GPU memory for this request: {SMALLER}", status=507)
    except MemoryError:
        return RequestError(f"out of memory for this request: {SMALLER}", status=507)
    except Exception as error:  # noqa: BLE001 - one request's failure must not kill the worker
        logger.exception("intgrads: request failed")
        return RequestError(f"internal error: {type(error).__name__}: {error}", status=500)
    seconds = time.perf_counter() - started
    logger.info("intgrads: %d sentence(s), %s steps, %s in %.2f s", len(request.sequences) or 1,
                request.options["n_steps"], request.options["method"], seconds)
    return request, answer, seconds


def run_together(service, requests: dict, unit, deadline) -> dict:
    """{position: result} for the requests of ``unit`` run as one engine call; empty when the call failed
    otherwise than by the deadline (each then runs alone)."""
    started = time.perf_counter()
    try:
        items = attribute(service.bundle, unit.sentences(requests), **service.engine_options(unit.options, deadline))
    except DeadlineExceeded as error:
        _free_memory()
        return {position: deadline_error(error, service.response_timeout) for position in unit.positions}
    except Exception as error:  # noqa: BLE001 - each request then runs alone
        _free_memory()
        logger.warning("intgrads: %d request(s) run together failed (%s: %s); each runs alone",
                       len(unit.positions), type(error).__name__, error)
        return {}
    elapsed = time.perf_counter() - started
    answers = dict(zip(unit.items, items))
    tokens = {position: sum(requests[position].lengths) for position in unit.positions}
    logger.info("intgrads: %d request(s) of the batch run together", len(unit.positions))
    return {position: (requests[position], gather(requests[position], answers, position),
                       elapsed * tokens[position] / max(1, sum(tokens.values())))
            for position in unit.positions}
