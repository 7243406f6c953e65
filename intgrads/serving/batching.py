"""The requests of one TorchServe batch, run together: grouped by their engine options, bucketed by length.

With ``--batch-size N`` TorchServe hands a worker up to N requests at once. Requests whose engine options are
equal (target, n_steps, method, baseline, keep_special_tokens, internal_batch_size, precision) share engine
calls: their sentences, sorted by token count, are cut into buckets of similar length, and each bucket is one
padded ``attribute`` call. A bucket grows while its longest sentence stays within

    longest <= PAD_RATIO * shortest + PAD_SLACK      (tokens)

so padding costs at most ~25% of a bucket's work. The attention mask keeps padding out of every real token,
so each answer equals the answer of its request run alone to 1e-5 (float rounding of other matrix shapes);
at batch size 1 nothing is grouped and answers are bitwise those of the engine called directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAD_RATIO = 1.25
PAD_SLACK = 4


@dataclass
class Bucket:
    """One engine call: ``items`` are (request position, sentence position in that request, token count)."""

    options: dict
    items: list = field(default_factory=list)

    def sentences(self, requests) -> list[str]:
        return [requests[r].sequences[s] for r, s, _ in self.items]

    def tokens_of(self, position: int) -> int:
        """Tokens of request ``position`` in this bucket (to share the bucket's engine time)."""
        return sum(tokens for r, _, tokens in self.items if r == position)

    @property
    def tokens(self) -> int:
        return sum(tokens for _, _, tokens in self.items)


def options_key(options: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in options.items()))


def plan_buckets(requests: dict) -> list[Bucket]:
    """Buckets for ``requests`` ({position: request with ``sequences``, ``options`` and ``lengths``}) that share
    their options with at least one other request; a request alone with its options is left out (it runs as
    it came)."""
    groups: dict = {}
    for position, request in requests.items():
        groups.setdefault(options_key(request.options), []).append(position)
    buckets = []
    for positions in groups.values():
        if len(positions) < 2:
            continue
        items = sorted(((position, index, length) for position in positions
                        for index, length in enumerate(requests[position].lengths)), key=lambda item: item[2])
        current = Bucket(requests[positions[0]].options)
        for item in items:
            if current.items and item[2] > PAD_RATIO * current.items[0][2] + PAD_SLACK:
                buckets.append(current)
                current = Bucket(current.options)
            current.items.append(item)
        buckets.append(current)
    return buckets


def gather(request, answers: dict, position: int):
    """The answer of request ``position`` from its sentences' answers ({(position, index): answer}): one dict for
    a ``"sequence"``, a list in order for ``"sequences"``."""
    ordered = [answers[(position, index)] for index in range(len(request.sequences))]
    return ordered[0] if request.single else ordered
