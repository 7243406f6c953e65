"""The work budget and the deadline (intgrads.engine.budget): the work formula against hand numbers, and an
attribution stopped between chunks by its deadline, leaving the model ready for the next call."""

from __future__ import annotations

import time

import pytest
import torch

import intgrads
from intgrads.engine.budget import (DeadlineExceeded, check_deadline, deadline_for, default_budget, model_shape,
                                    request_work)

SENTENCE = "the movie was good but the ending felt rushed."


def test_work_by_hand():
    # bert-base, one 64-token sentence, 50 steps: 64 * 50 * 12 * (12 * 768^2 + 2 * 64 * 768)
    assert request_work([64], 50, 12, 768) == 64 * 50 * 12 * (12 * 768 ** 2 + 2 * 64 * 768) == 275_565_772_800
    # padded to the longest sentence: three sentences of at most 10 tokens cost 3 x 10 tokens
    assert request_work([4, 10, 7], 2, 1, 8) == 3 * 10 * 2 * (12 * 64 + 2 * 10 * 8)
    assert request_work([5], 3, 0, 8) == request_work([5], 3, 1, 8)        # embeddings only: one layer's worth
    assert request_work([], 50, 12, 768) == 0
    # the request a shared server must refuse: 16 x 512 tokens x 500 steps on the demo's 6-layer, 384-wide MiniLM
    hour = request_work([512] * 16, 500, 6, 384) / 1e9
    assert 53_000 < hour < 53_200
    assert hour > default_budget(1800, threads=2) / 1e9 == 27_000      # refused with the launcher's defaults
    assert request_work([512] * 16, 50, 6, 384) / 1e9 < 27_000           # the same at 50 steps fits
    assert default_budget(1800, device="cuda:0") == 1e12 * 900


def test_deadline_margin():
    assert deadline_for(100.0, 1800) == 100 + 1800 - 10
    assert deadline_for(100.0, 8) == 100 + 8 - 2                        # a quarter of a short timeout
    check_deadline(None, 0, 10)
    check_deadline(time.monotonic() + 60, 0, 10)
    with pytest.raises(DeadlineExceeded, match="after 3 of 10 interpolation rows"):
        check_deadline(time.monotonic() - 1, 3, 10)


def test_model_shape_reads_bert_and_xlnet_configs(bundles):
    layers, hidden = model_shape(bundles["bert"].model)
    assert (layers, hidden) == (bundles["bert"].model.config.num_hidden_layers,
                                bundles["bert"].model.config.hidden_size)
    xlnet = bundles["xlnet"].model
    assert model_shape(xlnet) == (xlnet.config.n_layer, xlnet.config.d_model)


def test_an_attribution_past_its_deadline_stops_between_chunks(bundles):
    bundle = bundles["bert"]
    with pytest.raises(DeadlineExceeded) as stopped:
        intgrads.attribute(bundle, SENTENCE, n_steps=40, internal_batch_size=4, deadline=time.monotonic() - 1)
    assert stopped.value.done_rows == 0 and stopped.value.total_rows == 40
    # a deadline that falls during the work: the first chunks run, then it stops
    calls = []
    # (each forward through the layer sleeps 0.2 s: the deadline falls in the third to fifth chunk of ten, with
    # room for a stall before the first)
    hook = bundle.layer.register_forward_hook(lambda *args: (calls.append(time.sleep(0.2)), None)[1])
    try:
        with pytest.raises(DeadlineExceeded) as late:
            intgrads.attribute(bundle, SENTENCE, n_steps=40, internal_batch_size=4,
                               deadline=time.monotonic() + 1.0)
    finally:
        hook.remove()
    assert 0 < late.value.done_rows < 40 and late.value.done_rows % 4 == 0
    # the model is left as it was: the same call without a deadline equals a fresh one
    a = intgrads.attribute(bundle, SENTENCE, n_steps=8, deadline=time.monotonic() + 600)
    b = intgrads.attribute(bundle, SENTENCE, n_steps=8)
    assert torch.equal(a["integrated_gradients"], b["integrated_gradients"])
