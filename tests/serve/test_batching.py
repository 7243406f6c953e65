"""How the requests of one TorchServe batch are planned as units of work (no server: the plan alone), and how the
engine cuts sentences into buckets of similar length.

The served checks, each batched answer equal to its request's answer alone and a batch that never sinks a request
that fits alone, are in test_serve_requests.py."""

from __future__ import annotations

from intgrads.engine.buckets import PAD_RATIO, PAD_SLACK, length_buckets
from intgrads.serving.batching import gather, plan_units
from intgrads.serving.request import Request

STEPS_5 = {"target": 1, "n_steps": 5}


def _request(count, options=STEPS_5, single=None):
    return Request(sequences=[f"s{i}" for i in range(count)], single=count == 1 if single is None else single,
                   options=dict(options))


def test_requests_with_the_same_options_share_one_call():
    requests = {0: _request(1), 1: _request(1), 2: _request(2), 3: _request(1, {**STEPS_5, "n_steps": 6})}
    units = plan_units(requests)
    assert [unit.positions for unit in units] == [[0, 1, 2], [3]]   # request 3 is alone with its options
    assert units[0].together and not units[1].together
    assert units[0].items == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert units[0].sentences(requests) == ["s0", "s0", "s0", "s1"]


def test_a_unit_holds_no_more_work_than_one_request_may_ask_for():
    """Four requests of 215 G each under a 300 G budget (each let in alone) run as four units, never one of 860 G;
    small ones fill a unit up to the budget, in arrival order."""
    requests = {i: _request(1) for i in range(4)}
    units = plan_units(requests, lambda request: 215.0, budget=300.0)
    assert [unit.positions for unit in units] == [[0], [1], [2], [3]]
    assert [unit.work for unit in units] == [215.0] * 4
    sizes = [100.0, 150.0, 60.0, 90.0, 200.0]
    requests = {i: _request(1) for i in range(len(sizes))}
    for size, request in zip(sizes, requests.values()):
        request.lengths = [size]
    units = plan_units(requests, lambda request: request.lengths[0], budget=300.0)
    assert [unit.positions for unit in units] == [[0, 1], [2, 3], [4]]
    assert all(unit.work <= 300.0 for unit in units)
    assert [unit.positions for unit in plan_units(requests, lambda request: 1e9)] == [[0, 1, 2, 3, 4]]   # no budget


def test_gather_restores_each_requests_shape_and_order():
    single, many = _request(1), _request(2)
    answers = {(0, 0): "a", (1, 1): "c", (1, 0): "b"}
    assert gather(single, answers, 0) == "a"
    assert gather(many, answers, 1) == ["b", "c"]


def test_a_lone_request_is_a_unit_of_its_own():
    assert [unit.positions for unit in plan_units({0: _request(3)})] == [[0]]
    units = plan_units({0: _request(1), 1: _request(1, {**STEPS_5, "precision": "bfloat16"})})
    assert [(unit.positions, unit.together) for unit in units] == [([0], False), ([1], False)]


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


def test_the_service_answers_504_at_its_deadline_and_413_over_its_budget(bert_files):
    """What every front end gets from the service: work over the budget refused before any work (413), and a
    request past the deadline (the response timeout less min(10 s, a quarter) from the start of its work)
    stopped with a 504 JSON, the service free for the next one."""
    import json
    import time

    import intgrads
    from intgrads.serving.service import AttributionService, Incoming

    bundle = intgrads.load_model("bert", bert_files.weights, config=bert_files.config, tokenizer=bert_files.tokenizer)
    text = " ".join(["a long and winding review of a film"] * 14)

    def ask(service, **fields):   # the JSON summary: no answer too big to send
        body = json.dumps({"sequence": text, **fields}).encode()
        return service.answer(Incoming({"body": body}, {"content-type": "application/json",
                                                        "accept": "application/json"}))

    budgeted = AttributionService(bundle, response_timeout=4)            # 15 G/s x 1 thread x 2 s = 30 G
    over = ask(budgeted, n_steps=400)
    assert over.status == 413 and json.loads(over.body)["max_work_gmac"] == 30.0
    timed = AttributionService(bundle, response_timeout=4, limits={"max_work": 0, "max_steps": 1000,
                                                                      "chunk_tokens": 400})
    started = time.monotonic()
    late = ask(timed, n_steps=1000)
    assert late.status == 504 and "ran out of time" in json.loads(late.body)["error"]
    assert 2.5 < time.monotonic() - started < 4.5                         # stopped at 4 - min(10, 1) = 3 s
    assert ask(timed, n_steps=4).status == 200
