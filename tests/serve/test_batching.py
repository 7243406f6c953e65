"""How the requests of one TorchServe batch are grouped (no server: the plan alone), and how the engine cuts
sentences into buckets of similar length.

The served check, each batched answer equal to its request's answer alone, is in test_serve_requests.py."""

from __future__ import annotations

from intgrads.engine.buckets import PAD_RATIO, PAD_SLACK, length_buckets
from intgrads.serving.batching import gather, plan_groups
from intgrads.serving.request import Request

STEPS_5 = {"target": 1, "n_steps": 5}


def _request(count, options=STEPS_5, single=None):
    return Request(sequences=[f"s{i}" for i in range(count)], single=count == 1 if single is None else single,
                   options=dict(options))


def test_requests_with_the_same_options_share_one_call():
    requests = {0: _request(1), 1: _request(1), 2: _request(2), 3: _request(1, {**STEPS_5, "n_steps": 6})}
    groups = plan_groups(requests)
    assert len(groups) == 1   # request 3 is alone with its options: not planned (it runs as it came)
    group = groups[0]
    assert group.positions == [0, 1, 2]
    assert group.items == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert group.sentences(requests) == ["s0", "s0", "s0", "s1"]


def test_gather_restores_each_requests_shape_and_order():
    single, many = _request(1), _request(2)
    answers = {(0, 0): "a", (1, 1): "c", (1, 0): "b"}
    assert gather(single, answers, 0) == "a"
    assert gather(many, answers, 1) == ["b", "c"]


def test_a_lone_request_is_not_planned():
    assert plan_groups({0: _request(3)}) == []
    assert plan_groups({0: _request(1), 1: _request(1, {**STEPS_5, "precision": "bfloat16"})}) == []


def test_length_buckets_bound_the_padding():
    lengths = [40, 10, 12, 11, 300, 51, 9]
    buckets = length_buckets(lengths)
    # sorted: 9 10 11 12 (12 <= 1.25 * 9 + 4) | 40 51 (51 <= 1.25 * 40 + 4 = 54) | 300
    assert buckets == [[6, 1, 3, 2], [0, 5], [4]]
    for bucket in buckets:
        shortest, longest = min(lengths[i] for i in bucket), max(lengths[i] for i in bucket)
        assert longest <= PAD_RATIO * shortest + PAD_SLACK
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    assert length_buckets([]) == [] and length_buckets([7, 7, 7]) == [[0, 1, 2]]
