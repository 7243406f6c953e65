"""End to end: the opt-in "dtype" and "outputs" request fields, their 4xx errors, and the worker's timing headers."""

from __future__ import annotations

import pytest
import requests
import torch

import intgrads
from intgrads.answer.keys import COMPACT_OUTPUTS, OUTPUT_NAMES
from intgrads.answer.rebuild import rebuild_intermediates
from intgrads.client import Client

from .conftest import post_json
from .test_serve_answers import assert_same_answer, decode

SENTENCE = "the acting was wooden but the score is lovely."


def test_default_answer_has_every_key_in_float32(server, direct):
    response = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6})
    served = decode(response)
    assert_same_answer(served, direct("bert", SENTENCE, n_steps=6))
    assert served["intermediates"].dtype == torch.float32


def test_float16_answer(server, direct):
    response = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6, "dtype": "float16"})
    served = decode(response)
    expected = direct("bert", SENTENCE, n_steps=6)
    assert set(served) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert served[key].dtype == torch.float16, key
            torch.testing.assert_close(served[key].float(), value, atol=2e-3, rtol=2e-3)
        elif isinstance(value, torch.Tensor):
            assert served[key].dtype == value.dtype and torch.equal(served[key], value), key
    full = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6})
    assert len(response.content) < len(full.content)


def test_outputs_drop_intermediates_and_keep_settings(server, direct):
    wanted = [name for name in OUTPUT_NAMES if name != "intermediates"]
    served = decode(post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6, "outputs": wanted}))
    expected = direct("bert", SENTENCE, n_steps=6)
    expected.pop("intermediates")
    assert_same_answer(served, expected)


def test_outputs_list_of_sequences_and_form(server):
    served = decode(post_json(server.url("bert"), {"sequences": [SENTENCE, "fine."], "n_steps": 3,
                                                   "outputs": ["token_attributions"], "dtype": "float16"}))
    assert isinstance(served, list) and len(served) == 2
    for item in served:
        assert "token_attributions" in item and item["token_attributions"].dtype == torch.float16
        assert not {"integrated_gradients", "intermediates", "intermediate_gradients", "tokens"} & set(item)
        assert item["n_steps"] == 3 and item["method"] == "gausslegendre"
    form = requests.post(server.url("bert"), data={"sequence": SENTENCE, "n_steps": "3",
                                                   "outputs": "integrated_gradients,tokens"}, timeout=300)
    answer = decode(form)
    assert "integrated_gradients" in answer and "intermediates" not in answer


def test_auto_steps_and_idgi(server, direct):
    """n_steps "auto" with IDGI named: the served answer is the engine's, and a bad tolerance is a 400."""
    payload = {"sequence": SENTENCE, "n_steps": "auto", "tolerance": 0.02, "outputs": list(OUTPUT_NAMES) + ["idgi"]}
    served = decode(post_json(server.url("bert"), payload))
    assert_same_answer(served, direct("bert", SENTENCE, n_steps="auto", tolerance=0.02, idgi=True))
    assert served["method"] == "adaptive" and served["n_steps"] == served["alphas"].shape[0]
    assert {"idgi", "idgi_token_attributions", "gradient_evaluations"} <= set(served)
    bad = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": "auto", "tolerance": 2})
    assert bad.status_code == 400 and "tolerance must be a number between 0 and 1" in bad.json()["error"]


@pytest.mark.parametrize("payload, words", [
    ({"dtype": "float64"}, "dtype must be one of float32, float16"),
    ({"dtype": 16}, "dtype must be one of"),
    ({"outputs": ["attention"]}, "outputs may name integrated_gradients"),
    ({"outputs": "tokens"}, "outputs must be a list"),
    ({"outputs": []}, "outputs is an empty list"),
    ({"outputs": [1]}, "outputs must be a list"),
], ids=["dtype-64", "dtype-number", "outputs-unknown", "outputs-string", "outputs-empty", "outputs-number"])
def test_bad_encoding_fields(server, payload, words):
    response = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 3, **payload})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert response.headers["Content-Type"].startswith("application/json")


def test_timing_headers(server):
    response = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6})
    decode(response)
    engine = float(response.headers["X-Intgrads-Engine-Ms"])
    encode = float(response.headers["X-Intgrads-Encode-Ms"])
    assert engine > 0 and encode >= 0
    summary = post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 6},
                        headers={"Accept": "application/json"})
    assert summary.status_code == 200 and float(summary.headers["X-Intgrads-Engine-Ms"]) > 0


def test_compact_answer_rebuilds_the_whole_one(server):
    """outputs = every output but the intermediates, plus x and b: about 60% of the bytes at 12 steps, and the
    intermediates rebuilt from it are the server's, bit for bit (XLNet: a sequence-first layer)."""
    options = {"sequence": SENTENCE, "n_steps": 12, "method": "riemann_middle"}
    whole = post_json(server.url("xlnet-base"), options)
    compact = post_json(server.url("xlnet-base"), {**options, "outputs": list(COMPACT_OUTPUTS)})
    answer, expected = decode(compact), decode(whole)
    assert "intermediates" not in answer and answer["layer_input"].shape == expected["integrated_gradients"].shape
    rebuilt = rebuild_intermediates(answer)
    assert list(rebuilt) == list(expected)
    for key, value in expected.items():
        assert torch.equal(rebuilt[key], value) if isinstance(value, torch.Tensor) else rebuilt[key] == value, key
    assert len(compact.content) < 0.7 * len(whole.content)


def test_the_client_takes_compact_bodies_and_writes_whole_answers(server, tmp_path):
    """intgrads-client's body path, compact (a server on another machine by default; "always" here) asks for x
    and b and writes the same answer file the server would have sent whole; this server, on loopback, sends whole
    bodies by default (--rebuild remote), as with "never"."""
    sentences = ["a wonderful, moving film.", "the food was awful."]
    for rebuild, rebuilt in (("always", 2), ("remote", 0), ("never", 0)):
        client = Client(server.url("bert"), retries=0, handoff=False, rebuild=rebuild)
        out = tmp_path / f"rebuild-{rebuild}"
        report = client.run(sentences, out, n_steps=5, concurrency=1, progress=False)
        assert (report.answered, report.failed) == (2, 0) and client.rebuilt == rebuilt
        for line, sentence in enumerate(sentences, 1):
            expected = decode(post_json(server.url("bert"), {"sequence": sentence, "n_steps": 5}))
            got = intgrads.load_answer(out / f"{line:06d}.gzip")
            assert list(got) == list(expected)
            for key, value in expected.items():
                assert torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value, key
