"""One model served, whatever the front end: :class:`AttributionService` takes requests in (:class:`Incoming`:
the body's parts, the headers, the query string where the front end sees it) and gives replies out
(:class:`~intgrads.serving.replies.Reply`). A front end (the TorchServe handler, the Ray Serve app) is glue: it
turns its own request into an ``Incoming`` and a ``Reply`` into its own response.

Per request: :meth:`AttributionService.parse` reads and checks it (``intgrads.serving.request``) and refuses,
before any work, an answer too big to send or work over the budget (``intgrads.serving.guards``). Per batch:
:meth:`AttributionService.run` plans units of work (``intgrads.serving.batching``) and runs them one after the
other, handing each unit's replies to the front end as soon as it is done. The deadline of a unit is the response
timeout (less a margin) from the moment the front end last sent something: a front end that sends each unit's
answers at once (TorchServe's streamed responses) gives every unit a window of its own. Where replies wait for the
batch's end, its units share one window, and a unit that its estimate (at the rate this worker has shown) says
would not fit in what is left is not started: its requests get 503 with Retry-After (busy, send again) rather than
a 504 after the work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..answer.keys import SENDABLE_NAMES
from ..engine.baselines import BASELINES
from ..engine.budget import BUDGET_SHARE, G, deadline_for, model_shape, request_work
from ..engine.memory import reuse_freed_memory, reuse_memory_wanted
from ..engine.models import load_model
from ..engine.precision import PRECISIONS
from ..engine.quadrature import METHODS
from .batching import plan_units
from .guards import check_answer_size, check_work, counted_steps, sentence_lengths, work_budget
from .lm_guards import check_lm_request, lm_work
from .handoff import HandoffDir
from .incoming import Incoming
from .replies import Reply, answer_reply, error_reply, refuse_non_finite
from .request import DEFAULT_LIMITS, DEFAULT_OPTIONS, RequestError, parse_request
from .running import run_alone, run_together


class AttributionService:
    """One model behind any front end; see the module docstring."""

    def __init__(self, bundle, *, model_name: str = "MODEL", defaults=None, limits=None, handoff=None,
                 response_timeout: float = 1800.0, device: str = "cpu", threads: int = 1):
        self.bundle = bundle
        self.model_name = model_name
        self.defaults = {**DEFAULT_OPTIONS, **{k: v for k, v in (defaults or {}).items() if k in DEFAULT_OPTIONS}}
        self.limits = {**DEFAULT_LIMITS, **{k: v for k, v in (limits or {}).items() if k in DEFAULT_LIMITS}}
        self.handoff = handoff
        self.response_timeout = float(response_timeout)
        self.work_budget = work_budget(self.limits.get("max_work"), self.response_timeout, device, threads)
        self.layers, self.hidden = model_shape(bundle.model)
        self.causal = getattr(bundle, "kind", None) == "causal_lm"
        # G MAC/s this worker does, learned from its own units (start: the budget's cautious rate)
        self.rate = self.work_budget / (self.response_timeout * BUDGET_SHARE) if self.work_budget else None

    @classmethod
    def from_archive(cls, settings: dict, model_dir, *, model_name: str, device: str, threads: int,
                     response_timeout: float, environ=os.environ) -> "AttributionService":
        """Load the model an archive's ``intgrads`` settings describe (paths inside ``model_dir``), with the run's
        environment: INTGRADS_MAX_RESPONSE_BYTES, the hand-off directory (INTGRADS_HANDOFF_*), and
        INTGRADS_REUSE_MEMORY=0 to keep glibc's default memory handling (``intgrads.engine.memory``)."""
        model_dir = Path(model_dir)
        if reuse_memory_wanted(environ):
            reuse_freed_memory()

        def inside(name):
            value = settings.get(name)
            if not value:
                return None
            root = model_dir.resolve()
            if root not in (model_dir / value).resolve().parents:   # "../x" or a link leading out of the archive
                raise ValueError(f"the archive's {name} path {value!r} leads outside the archive: not followed")
            return str(model_dir / value)

        limits = dict(settings.get("limits") or {})
        if environ.get("INTGRADS_MAX_RESPONSE_BYTES"):
            limits["max_response_bytes"] = int(environ["INTGRADS_MAX_RESPONSE_BYTES"])
        bundle = load_model(settings["family"], inside("weights"), config=inside("config"),
                            tokenizer=inside("tokenizer") or settings.get("tokenizer_name"), device=device,
                            layer=settings.get("layer"))
        return cls(bundle, model_name=model_name, defaults=settings.get("defaults"), limits=limits,
                   handoff=HandoffDir.from_environment(environ), response_timeout=response_timeout, device=device,
                   threads=threads)

    # ------------------------------------------------------------------ one request in
    def max_tokens(self) -> int:
        limit = int(self.limits["max_tokens"])
        positions = self.bundle.max_positions
        return min(limit, positions) if positions else limit

    def parse(self, incoming: Incoming):
        """The checked :class:`~intgrads.serving.request.Request`, or the :class:`RequestError` that refuses it."""
        try:
            request = parse_request(incoming.parts, incoming.headers, model_name=self.model_name,
                                    num_labels=self.bundle.num_labels, defaults=self.defaults, limits=self.limits,
                                    explain=incoming.explain, query=incoming.query, causal=self.causal)
            if self.causal:
                check_lm_request(request, self.bundle, self.hidden, self.layers, self.limits, self.work_budget,
                                 self.response_timeout, self.max_tokens())
                return request
            lengths = request.lengths = sentence_lengths(self.bundle, request.sequences, self.max_tokens())
            if not request.want_json:
                check_answer_size(request, lengths, self.hidden, int(self.limits["max_response_bytes"]))
            check_work(request, lengths, self.bundle.model, self.work_budget, self.response_timeout)
            return request
        except RequestError as error:
            return error
        except Exception as error:  # noqa: BLE001 - one unreadable request must not fail the others in its batch
            return RequestError(f"could not read the request: {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ a batch through
    def run(self, parsed: list, deliver) -> None:
        """Answer a batch: ``deliver(replies, more)`` is called with the refused requests' replies first, then with
        each unit's as it is done, ``replies`` a list of (position in ``parsed``, Reply) and ``more`` True while
        other units are still to run. ``deliver`` returns True when the replies have left (the front end's clock
        for the batch starts again), False when they wait for the batch's end."""
        refused = [(i, error_reply(item)) for i, item in enumerate(parsed) if isinstance(item, RequestError)]
        valid = {i: item for i, item in enumerate(parsed) if not isinstance(item, RequestError)}
        units = plan_units(valid, self._work_of, self._unit_budget())
        window = time.monotonic()   # when the front end's clock last started
        if refused and deliver(refused, bool(units)):
            window = time.monotonic()
        fresh = True                # no unit has run in this window yet
        for number, unit in enumerate(units):
            now = time.monotonic()
            deadline = deadline_for(window, self.response_timeout)
            if not fresh and now + self._seconds(unit.work) > deadline:
                results = {position: self._busy(unit.work) for position in unit.positions}
            else:
                results = run_together(self, valid, unit, deadline) if unit.together and not self.causal else {}
                for position in unit.positions:
                    if position not in results:
                        results[position] = run_alone(self, valid[position], deadline)
                self._learn(unit, results, now)   # before encoding: the rate is the engine's
            replies = [(position, self._reply(results[position])) for position in unit.positions]
            fresh = deliver(replies, number < len(units) - 1)
            if fresh:
                window = time.monotonic()

    def answer(self, incoming: Incoming) -> Reply:
        """The reply to one request on its own (a front end without batches)."""
        out = []
        self.run([self.parse(incoming)], lambda replies, more: out.extend(replies) or True)
        return out[0][1]

    def engine_options(self, options: dict, deadline) -> dict:
        chunk = self.limits.get("chunk_tokens")   # 0 or None (--chunk-tokens 0): every step at once
        return {**options, "max_tokens": self.max_tokens(), "chunk_tokens": int(chunk) if chunk else None,
                "deadline": deadline}

    def _work_of(self, request) -> float:
        if self.causal:
            return lm_work(request, self.layers, self.hidden)
        return request_work(request.lengths, counted_steps(request.options)[0], self.layers, self.hidden) / G

    def _unit_budget(self) -> float | None:
        """The most work (G MACs) one unit may hold: what this worker does in BUDGET_SHARE of its response timeout
        at the rate it has shown (None without a budget: --max-work 0)."""
        return self.rate * self.response_timeout * BUDGET_SHARE if self.rate else None

    def _learn(self, unit, results, started: float):
        """Fold the rate of a unit that ran to its end into :attr:`rate` (halfway towards what it showed)."""
        seconds = time.monotonic() - started
        if not self.rate or seconds < 0.05 or any(isinstance(result, RequestError) for result in results.values()):
            return
        self.rate = 0.5 * self.rate + 0.5 * unit.work / seconds

    def _seconds(self, work_gmac: float) -> float:
        """Seconds ``work_gmac`` is expected to take at the rate this worker has shown; 0 without a budget."""
        return work_gmac / self.rate if self.rate else 0.0

    def _busy(self, work_gmac: float) -> RequestError:
        wait = max(1, round(self._seconds(work_gmac)))
        return RequestError("this request came in a batch whose other requests used up the time the server gives "
                            f"one batch ({self.response_timeout:.0f} s): nothing was computed; send it again (in about "
                            f"{wait} s; intgrads-client does)", status=503, retry_after=wait)

    def _reply(self, result) -> Reply:
        if isinstance(result, RequestError):
            return error_reply(result)
        request, answer, seconds = result
        try:
            refuse_non_finite(answer)
            return answer_reply(request, answer, seconds, gzip_level=int(self.limits["gzip_level"]),
                                handoff=self.handoff)
        except RequestError as error:
            return error_reply(error)
        except Exception as error:  # noqa: BLE001 - one answer's failure must not fail the worker
            return error_reply(RequestError(f"internal error while encoding the answer: {type(error).__name__}: "
                                            f"{error}", status=500))

    # ------------------------------------------------------------------ what it is
    def describe(self) -> dict:
        """The model, its defaults and limits: TorchServe's describe call (``customized=true``) and the Ray app's
        ``GET /models/NAME``."""
        bundle = self.bundle
        if self.causal:
            from .lm_guards import describe_lm

            return describe_lm(self)
        return {"kind": "classifier", "family": bundle.family, "layout": bundle.layout, "layer": bundle.layer_name,
                "activation": bundle.activation, "device": str(bundle.device), "layers": self.layers,
                "hidden": self.hidden, "num_labels": bundle.num_labels, "labels": list(bundle.label_names),
                "max_positions": bundle.max_positions, "defaults": dict(self.defaults),
                "limits": {**{k: v for k, v in self.limits.items() if k != "max_work"},
                           "max_work_gmac": self.work_budget, "response_timeout_s": self.response_timeout},
                "outputs": list(SENDABLE_NAMES), "methods": list(METHODS), "baselines": list(BASELINES),
                "precisions": list(PRECISIONS)}

