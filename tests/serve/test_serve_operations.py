"""What a running server tells its operator and its users: TorchServe's describe call (``customized=true``)
answered by the handler as JSON, Prometheus metrics on the metrics port, and a GET or query-string request told
where options go."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

import intgrads


def test_the_describe_call_answers_the_model_and_its_limits(server, bundles):
    response = server.manage("GET", "/models/bert?customized=true")
    assert response.status_code == 200, response.text
    meta = response.json()[0]["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    config = bundles["bert"].model.config
    assert meta["family"] == "bert" and meta["layer"] == bundles["bert"].layer_name
    assert (meta["layers"], meta["hidden"], meta["num_labels"]) == (config.num_hidden_layers, config.hidden_size,
                                                                    config.num_labels)
    assert meta["defaults"]["n_steps"] == 50 and meta["defaults"]["method"] == "gausslegendre"
    assert meta["limits"]["max_steps"] == 500 and meta["limits"]["max_work_gmac"] > 0
    assert meta["limits"]["response_timeout_s"] > 0 and meta["limits"]["gzip_level"] == 0
    # what a request's "outputs" may name: every default output, x and b, and IDGI
    assert meta["outputs"] == list(intgrads.OUTPUT_NAMES) + ["layer_input", "layer_baseline", "idgi",
                                                             "idgi_token_attributions"]
    assert meta["methods"] == list(intgrads.METHODS) and meta["precisions"] == ["float32", "bfloat16", "float16"]
    assert meta["defaults"]["precision"] == "float32"
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


def test_management_is_a_socket_for_this_user_and_scaling_has_a_ceiling(server):
    """On loopback the management API is a Unix socket in an owner-only folder: a scale request to the TCP port
    finds nothing listening. The launcher's --scale goes through the socket and refuses more workers than the
    machine's memory holds."""
    import os
    import stat

    from .conftest import run_launcher

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.put(f"http://127.0.0.1:{server.port + 1}/models/hf?min_worker=50", timeout=10)
    private = server.run_dir / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and private.stat().st_uid == os.getuid()
    assert stat.S_ISSOCK((private / "management.sock").stat().st_mode)
    assert "--scale hf=2" in server.output or "--scale bert=2" in server.output
    assert "--unix-socket" in server.output

    def scale(spec):
        return run_launcher(["--scale", spec, "-p", server.port, "--run-dir", server.run_dir], cwd=server.home,
                            env=server.env, timeout=300)

    refused = scale("hf=100000")
    assert refused.returncode == 2 and "worker(s) fit this machine now" in refused.stderr, refused.stderr
    assert len(server.describe("hf")["workers"]) == 1
    assert scale("nosuch=2").returncode == 2 and scale("hf=0").returncode == 2
    up = scale("hf=2")
    assert up.returncode == 0 and "hf scaled to 2 worker(s)" in up.stdout, up.stdout + up.stderr
    assert sum(w.get("status") == "READY" for w in server.describe("hf")["workers"]) == 2
    assert scale("hf=1").returncode == 0
    deadline = time.time() + 60
    while len(server.describe("hf")["workers"]) != 1 and time.time() < deadline:
        time.sleep(0.5)
    assert len(server.describe("hf")["workers"]) == 1
