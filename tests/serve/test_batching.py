"""How the requests of one TorchServe batch are grouped and bucketed (no server: the plan alone).

The served check, each batched answer equal to its request's answer alone, is in test_serve_requests.py."""

from __future__ import annotations

from intgrads.serving.batching import PAD_RATIO, PAD_SLACK, gather, plan_buckets
from intgrads.serving.request import Request

STEPS_5 = {"target": 1, "n_steps": 5}


def _request(lengths, options=STEPS_5, single=None):
    sentences = [f"s{length}" for length in lengths]
    return Request(sequences=sentences, single=len(lengths) == 1 if single is None else single, options=dict(options),
                   lengths=list(lengths))


def test_same_options_share_buckets_of_similar_length():
    requests = {0: _request([10]), 1: _request([12]), 2: _request([40, 11]), 3: _request([9], {**STEPS_5, "n_steps": 6})}
    buckets = plan_buckets(requests)
    # request 3 is alone with its options: not planned (it runs as it came)
    assert all(position != 3 for bucket in buckets for position, _, _ in bucket.items)
    assert [[(p, i) for p, i, _ in bucket.items] for bucket in buckets] == [[(0, 0), (2, 1), (1, 0)], [(2, 0)]]
    # 12 <= 1.25 * 10 + 4 = 16.5 joins the first bucket; 40 does not
    assert 12 <= PAD_RATIO * 10 + PAD_SLACK < 40
    first = buckets[0]
    assert first.sentences(requests) == ["s10", "s11", "s12"]
    assert first.tokens == 33 and first.tokens_of(2) == 11


def test_gather_restores_each_requests_shape_and_order():
    single, many = _request([10]), _request([40, 11])
    answers = {(0, 0): "a", (1, 1): "c", (1, 0): "b"}
    assert gather(single, answers, 0) == "a"
    assert gather(many, answers, 1) == ["b", "c"]


def test_a_lone_request_is_not_planned():
    assert plan_buckets({0: _request([10])}) == []
    assert plan_buckets({0: _request([10]), 1: _request([10], {**STEPS_5, "precision": "bfloat16"})}) == []
