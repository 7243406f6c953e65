"""Sentences of different lengths cut into buckets of similar length, each run as one padded batch.

A padded batch computes every sentence at its longest member's length, so one long sentence among short
ones multiplies their work. :func:`length_buckets` sorts the sentences by token count T_i and closes a
bucket when the next sentence would break

    T_longest <= PAD_RATIO * T_shortest + PAD_SLACK            (PAD_RATIO = 1.25, PAD_SLACK = 4 tokens)

so padding costs at most ~25% of a bucket's work (plus a few tokens for very short sentences). The attention
mask keeps padding out of every real token's value: an answer depends on its bucket only through float
rounding (1e-5). A model whose forward takes no attention mask (FNet) gets buckets of equal length only
(``exact``): no padding at all.
"""

from __future__ import annotations

PAD_RATIO = 1.25
PAD_SLACK = 4


def length_buckets(lengths, exact: bool = False) -> list[list[int]]:
    """Indices into ``lengths``, grouped into buckets of similar length (shortest first; stable within ties);
    ``exact``: of equal length."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    buckets: list[list[int]] = []
    for index in order:
        if buckets and (lengths[index] == lengths[buckets[-1][0]] if exact else
                        lengths[index] <= PAD_RATIO * lengths[buckets[-1][0]] + PAD_SLACK):
            buckets[-1].append(index)
        else:
            buckets.append([index])
    return buckets
