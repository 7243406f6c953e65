"""The requests of one TorchServe batch, run together: grouped by their engine options.

With ``--batch-size N`` TorchServe hands a worker up to N requests at once. Requests whose engine options are
equal (target, n_steps, method, baseline, keep_special_tokens, internal_batch_size, precision) make one
``attribute`` call with all their sentences; the engine cuts them into buckets of similar length
(``intgrads.engine.buckets``), each one padded batch. The attention mask keeps padding out of every real token,
so each answer equals the answer of its request run alone to 1e-5 (float rounding of other matrix shapes); at
batch size 1 nothing is grouped and answers are bitwise those of the engine called directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Group:
    """One engine call: ``items`` are (request position, sentence position in that request)."""

    options: dict
    positions: list = field(default_factory=list)
    items: list = field(default_factory=list)

    def sentences(self, requests) -> list[str]:
        return [requests[position].sequences[index] for position, index in self.items]


def options_key(options: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in options.items()))


def plan_groups(requests: dict) -> list[Group]:
    """Groups of ``requests`` ({position: request with ``sequences`` and ``options``}) that share their options,
    two requests or more each; a request alone with its options is left out (it runs as it came)."""
    groups: dict = {}
    for position, request in requests.items():
        group = groups.setdefault(options_key(request.options), Group(request.options))
        group.positions.append(position)
        group.items.extend((position, index) for index in range(len(request.sequences)))
    return [group for group in groups.values() if len(group.positions) > 1]


def gather(request, answers: dict, position: int):
    """The answer of request ``position`` from its sentences' answers ({(position, index): answer}): one dict for
    a ``"sequence"``, a list in order for ``"sequences"``."""
    ordered = [answers[(position, index)] for index in range(len(request.sequences))]
    return ordered[0] if request.single else ordered
