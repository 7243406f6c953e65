"""The requests of one batch, planned as units of work: those with the same options run together, as long as
their work together fits what one request may ask for.

With ``--batch-size N`` TorchServe hands a worker up to N requests at once. Requests whose engine options are
equal (target, n_steps, method, baseline, keep_special_tokens, internal_batch_size, precision) make one
``attribute`` call with all their sentences; the engine cuts them into buckets of similar length
(``intgrads.engine.buckets``), each one padded batch. The attention mask keeps padding out of every real token,
so each answer equals the answer of its request run alone to 1e-5 (float rounding of other matrix shapes); at
batch size 1 nothing is grouped and answers are bitwise those of the engine called directly.

A batch must never make a request fail that would have succeeded alone. Every request was let in because its
work W (``intgrads.engine.budget.request_work``) is at most the budget B, what a worker does in half its
response timeout; so a unit is cut off before its summed work passes B:

    unit = a run of same-option requests, in arrival order, with  W_1 + ... + W_k <= B   (or k = 1)

and each unit runs against its own deadline where the front end can send each unit's answers as it finishes
(see :class:`intgrads.serving.service.AttributionService`). Without a budget (``--max-work 0``) all requests
with the same options form one unit, as they did before there was a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Unit:
    """One engine call: ``positions`` are the requests it answers, ``items`` (request position, sentence
    position in that request), ``work`` their summed G multiply-accumulates."""

    options: dict
    positions: list = field(default_factory=list)
    items: list = field(default_factory=list)
    work: float = 0.0

    def sentences(self, requests) -> list[str]:
        return [requests[position].sequences[index] for position, index in self.items]

    @property
    def together(self) -> bool:
        return len(self.positions) > 1


def options_key(options: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in options.items()))


def plan_units(requests: dict, work_of=None, budget: float | None = None) -> list[Unit]:
    """The units of work for ``requests`` ({position: request with ``sequences`` and ``options``}), in the order of
    their first request: requests sharing their options, in arrival order, while their summed ``work_of(request)``
    stays within ``budget`` (None: no bound); a request alone with its options is a unit of its own."""
    open_units: dict = {}
    units = []
    for position, request in requests.items():
        work = float(work_of(request)) if work_of is not None else 0.0
        key = options_key(request.options)
        unit = open_units.get(key)
        if unit is None or (budget is not None and unit.work + work > budget):
            unit = open_units[key] = Unit(request.options)
            units.append(unit)
        unit.positions.append(position)
        unit.items.extend((position, index) for index in range(len(request.sequences)))
        unit.work += work
    return units


def gather(request, answers: dict, position: int):
    """The answer of request ``position`` from its sentences' answers ({(position, index): answer}): one dict for
    a ``"sequence"``, a list in order for ``"sequences"``."""
    ordered = [answers[(position, index)] for index in range(len(request.sequences))]
    return ordered[0] if request.single else ordered
