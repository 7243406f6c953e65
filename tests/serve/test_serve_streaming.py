"""Big gzip bodies go out in pieces (TorchServe's streamed responses, HTTP chunked): the same answer, the same
status and headers, beside other requests of the same batch. Real TorchServe, real HTTP."""

from __future__ import annotations

import gzip
import io
import json
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

import intgrads
from intgrads.answer.summary import index_record

from .conftest import post_json
from .test_serve_answers import assert_same_answer, decode

LONG = ("the film was slow at first but the music and the acting made every scene feel honest and warm , "
        "and by the end the whole story seemed bright , charming and strangely moving")


def piece_bytes() -> int:
    """The size of a streamed body's pieces (the servers of these tests do not set INTGRADS_PIECE_BYTES)."""
    from intgrads.serving.replies import PIECE_BYTES

    return PIECE_BYTES


def test_a_big_answer_streams_in_pieces_and_equals_the_engines(server, direct):
    response = post_json(server.url("demo"), {"sequence": LONG})
    served = decode(response)
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert len(response.content) > 2 * piece_bytes()    # three pieces at least
    expected = direct("demo", LONG)
    assert_same_answer(served, expected)
    # the headers set before the first piece arrive: the index record, the timings
    assert json.loads(response.headers["X-Intgrads-Summary"]) == index_record(intgrads.summarize_answer(served))
    assert float(response.headers["X-Intgrads-Engine-Ms"]) > 0
    # the README's snippet reads it
    with gzip.open(io.BytesIO(response.content), "rb") as handle:
        snippet = torch.load(io.BytesIO(handle.read()), weights_only=True)
    assert torch.equal(snippet["intermediate_gradients"], served["intermediate_gradients"])


def test_a_small_answer_is_one_body(server):
    response = post_json(server.url("demo"), {"sequence": "good.", "n_steps": 4})
    decode(response)
    assert int(response.headers["Content-Length"]) == len(response.content) < piece_bytes()


def test_streamed_and_whole_answers_and_errors_in_one_batch(server, direct):
    """Sent at once to a server with batch size 4: each request gets its own answer or error."""
    asks = [{"sequence": LONG}, {"sequence": LONG, "n_steps": 60}, {"sequence": "good.", "n_steps": 4},
            {"sequence": "bad", "n_steps": -3}]
    with ThreadPoolExecutor(len(asks)) as pool:
        responses = list(pool.map(lambda ask: post_json(server.url("demo"), ask), asks))
    for ask, response in zip(asks[:3], responses):
        options = {k: v for k, v in ask.items() if k != "sequence"}
        assert_same_answer(decode(response), direct("demo", ask["sequence"], **options), atol=1e-5)
    assert responses[1].headers.get("Transfer-Encoding") == "chunked"
    assert responses[3].status_code == 400 and "n_steps" in responses[3].json()["error"]


def test_a_client_reading_in_small_chunks_gets_every_byte(server):
    response = requests.post(server.url("demo"), data=json.dumps({"sequence": LONG}),
                             headers={"Content-Type": "application/json"}, stream=True, timeout=300)
    assert response.status_code == 200
    chunks = list(response.iter_content(chunk_size=65536))
    body = b"".join(chunks)
    with gzip.open(io.BytesIO(body), "rb") as handle:
        assert torch.load(io.BytesIO(handle.read()), weights_only=True)["tokens"][0] == "[CLS]"
