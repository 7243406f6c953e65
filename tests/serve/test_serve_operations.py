"""What a running server tells its operator and its users: TorchServe's describe call (``customized=true``)
answered by the handler as JSON, Prometheus metrics on the metrics port, and a GET or query-string request told
where options go."""

from __future__ import annotations

import json
import re
import time

import requests

import intgrads


def test_the_describe_call_answers_the_model_and_its_limits(server, bundles):
    response = requests.get(f"{server.management}/models/bert?customized=true", timeout=60)
    assert response.status_code == 200, response.text
    meta = response.json()[0]["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    config = bundles["bert"].model.config
    assert meta["family"] == "bert" and meta["layer"] == bundles["bert"].layer_name
    assert (meta["layers"], meta["hidden"], meta["num_labels"]) == (config.num_hidden_layers, config.hidden_size,
                                                                    config.num_labels)
    assert meta["defaults"]["n_steps"] == 50 and meta["defaults"]["method"] == "gausslegendre"
    assert meta["limits"]["max_steps"] == 500 and meta["limits"]["max_work_gmac"] > 0
    assert meta["limits"]["response_timeout_s"] > 0 and meta["limits"]["gzip_level"] == 1
    assert meta["outputs"] == list(intgrads.OUTPUT_NAMES) and meta["methods"] == list(intgrads.METHODS)
    # the server still answers after it
    answer = requests.post(server.url("bert"), json={"sequence": "good", "n_steps": 4}, timeout=120)
    assert answer.status_code == 200


def test_a_get_with_a_query_string_is_told_to_post_a_json_body(server):
    for method in (requests.get, requests.post):
        response = method(server.url("bert") + "?sequence=good&n_steps=5", timeout=60)
        assert response.status_code == 400
        error = response.json()["error"]
        assert "query string" in error and "JSON body" in error and "curl " in error


def _scrape(server) -> str:
    response = requests.get(f"http://127.0.0.1:{server.port + 2}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def _value(text: str, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for match in re.finditer(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def test_the_metrics_port_serves_prometheus_text_with_the_servers_own_counters(server):
    before = _scrape(server)
    ok = requests.post(server.url("bert"), json={"sequence": "a fine film", "n_steps": 4}, timeout=120)
    refused = requests.post(server.url("bert"), json={"sequence": "a fine film", "n_steps": 100000}, timeout=120)
    assert ok.status_code == 200 and refused.status_code == 413
    deadline = time.time() + 20
    while True:
        text = _scrape(server)
        grown = {status: _value(text, "IntgradsRequests", ModelName="bert", Status=status)
                 - _value(before, "IntgradsRequests", ModelName="bert", Status=status) for status in ("200", "413")}
        if (grown["200"] >= 1 and grown["413"] >= 1) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert grown["200"] >= 1 and grown["413"] >= 1, text[-2000:]
    assert "# TYPE IntgradsRequests counter" in text and "ts_inference_requests_total" in text
    for name in ("IntgradsEngineSeconds", "IntgradsEncodeSeconds", "IntgradsTokenSteps", "IntgradsAnswerBytes",
                 "IntgradsWarnings"):
        assert f"# TYPE {name} counter" in text, name
    assert _value(text, "IntgradsAnswerBytes", ModelName="bert") - _value(before, "IntgradsAnswerBytes",
                                                                         ModelName="bert") >= len(ok.content)
    tokens = len(intgrads.decode_answer(ok.content)["tokens"])
    steps = _value(text, "IntgradsTokenSteps", ModelName="bert") - _value(before, "IntgradsTokenSteps",
                                                                          ModelName="bert")
    assert steps >= 4 * tokens
