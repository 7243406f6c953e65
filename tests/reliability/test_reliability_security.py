"""Reliability: loopback binds by default; token auth with -h 0.0.0.0 (requests sent to 127.0.0.1 only);
no model registration through the management API; a .pth whose unpickling runs code is refused and the code does
not run; a tokenizer file linking outside its directory is not followed; the size, token and n_steps caps
(launcher flags) are enforced."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse

import psutil
import pytest
import requests
import torch

import intgrads
from serve.conftest import post_json

from .conftest import DEMO, OPEN, OPEN_LIMITS, bearer, decompressed, launch, load

JSON = {"Content-Type": "application/json"}


def _props(server) -> dict:
    lines = (server.run_dir / "config.properties").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _listening(pid: int) -> set:
    addresses = set()
    for proc in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add((conn.laddr.ip, conn.laddr.port))
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            pass
    return addresses


def test_default_binds_are_loopback(demo_server, tally):
    server = demo_server["server"]
    record = tally("5 security")
    props = _props(server)
    for key in ("inference_address", "metrics_address"):
        assert record.case(props[key].startswith("http://127.0.0.1:")), (key, props[key])
    # management: a Unix socket in the run's owner-only folder, no TCP port
    assert record.case(props["management_address"] == f"unix:{server.run_dir / 'private' / 'management.sock'}")
    assert record.case(props["grpc_inference_address"] == "127.0.0.1" == props["grpc_management_address"])
    pid = json.loads((server.run_dir / "state.json").read_text())["pid"]
    listening = _listening(pid)
    ours = {(ip, port) for ip, port in listening if server.port <= port < server.port + 5}
    assert ours, listening
    assert record.case(all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening)), listening


def test_open_host_requires_the_token(open_server, tally):
    server = open_server
    record = tally("5 security")
    props = _props(server)
    assert record.case(props["inference_address"].startswith("http://0.0.0.0:")
                       and props["disable_token_authorization"] == "false")
    url = server.url(OPEN)
    payload = {"sequence": "good", "n_steps": 4}
    for headers in ({}, bearer("not-the-key"), bearer(server.keys["management"]), {"Authorization": "Basic eDp5"}):
        response = post_json(url, payload, headers=headers)
        assert record.case(response.status_code in (400, 401, 403)), (headers, response.status_code)
    described = requests.get(f"{server.management}/models/{OPEN}", timeout=30)
    assert record.case(described.status_code in (400, 401, 403)), described.status_code
    answered = post_json(url, payload, headers=bearer(server.keys["inference"]))
    assert record.case(answered.status_code == 200 and answered.content[:2] == b"\x1f\x8b")


def test_registering_models_by_url_is_refused(demo_server, open_server, tally):
    record = tally("5 security")
    cases = [
        (demo_server["server"], {}),
        (open_server, bearer(open_server.keys["management"])),   # even with the management key
    ]
    for server, headers in cases:   # server.manage sends the management key where token auth is on
        before = server.manage("GET", "/models").json()
        mar = server.model_store / f"{server.models[0]}.mar"
        for url in (f"file://{mar}", "http://127.0.0.1:9/evil.mar", "https://example.com/evil.mar",
                    "file:///etc/passwd"):
            response = server.manage("POST", "/models?" + urllib.parse.urlencode({"url": url, "model_name": "evil"}))
            assert record.case(response.status_code >= 400), (url, response.status_code, response.text[:200])
        response = server.manage("DELETE", f"/models/{server.models[0]}")
        assert record.case(response.status_code >= 400)
        after = server.manage("GET", "/models").json()
        assert record.case(after == before), (before, after)


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_pth(path, marker, bundle):
    state = {key: value for key, value in list(bundle.model.state_dict().items())[:3]}
    state["zz_payload"] = _Payload(marker)
    torch.save(state, path)


def test_pickled_code_in_a_pth_does_not_run(demo_server, demo_bundle, shared_store, tmp_path, tally):
    from intgrads.launcher.demo import DEMO_NAME
    from intgrads.engine.weights import read_state_dict

    record = tally("5 security")
    # the payload is live: a plain (unsafe) torch.load runs it
    proof = tmp_path / "proof-marker"
    _evil_pth(tmp_path / "proof.pth", proof, demo_bundle)
    torch.load(tmp_path / "proof.pth", weights_only=False)
    assert proof.exists(), "the payload should run under an unsafe load (test self-check)"

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    _evil_pth(evil, marker, demo_bundle)
    demo_dir = shared_store / DEMO_NAME
    with pytest.raises(ValueError, match="does not hold a plain state_dict"):
        read_state_dict(evil)
    assert record.case(not marker.exists())
    with pytest.raises(ValueError, match="does not hold a plain state_dict"):
        intgrads.load_model("bert", evil, config=demo_dir / "config.json", tokenizer=demo_dir)
    assert record.case(not marker.exists())
    _, result = launch(tmp_path / "home", tmp_path / "store", ["-bp", evil, "--config", demo_dir / "config.json",
                                                              "--tokenizer", demo_dir], check=False)
    assert record.case(result.returncode == 2 and "not hold a plain state_dict" in result.stderr), result.stderr[-1500:]
    assert record.case(not marker.exists())


def test_tokenizer_link_outside_its_directory_is_not_followed(demo_server, shared_store, tmp_path, tally):
    from intgrads.launcher.demo import DEMO_NAME

    record = tally("5 security")
    demo_dir = shared_store / DEMO_NAME
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "vocab.txt"
    shutil.copy(demo_dir / "vocab.txt", secret)      # a file a stranger wants packed into the archive
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_dir / name, tokenizer / name)
    (tokenizer / "vocab.txt").symlink_to(secret)
    (tokenizer / "special_tokens_map.json").symlink_to(os.path.relpath(outside, tokenizer) + "/../outside/x.json")
    _, result = launch(tmp_path / "home", tmp_path / "store", ["--hf-model", demo_dir, "--model-name", "linked",
                                                              "--tokenizer", tokenizer], check=False)
    assert record.case(result.returncode == 2 and "leads outside the directory" in result.stderr), result.stderr[-1500:]
    assert record.case(not (tmp_path / "store" / "linked.mar").exists())


def test_caps_from_the_launcher_flags(open_server, tally):
    """open_server runs with --max-steps 64 --max-tokens 32 --max-sequences 3 --max-chars 2000
    --max-body-bytes 8192; each cap is enforced with a 413 naming it, and a long text is cut to 32 tokens."""
    server = open_server
    record = tally("5 security")
    url = server.url(OPEN)
    headers = bearer(server.keys["inference"])
    limits = OPEN_LIMITS
    cases = [
        ({"sequence": "good", "n_steps": limits["max_steps"] + 1}, f"at most {limits['max_steps']}"),
        ({"sequences": ["good"] * (limits["max_sequences"] + 1)}, f"at most {limits['max_sequences']}"),
        ({"sequence": "g" * (limits["max_chars"] + 1)}, f"at most {limits['max_chars']}"),
        ({"sequences": ["\u00e9" * 1900] * 3}, f"at most {limits['max_body_bytes']}"),   # 34 kB escaped
    ]
    for payload, words in cases:
        response = post_json(url, payload, headers=headers)
        assert record.case(response.status_code == 413 and words in response.json()["error"]), response.text[:300]
    long = load(decompressed(post_json(url, {"sequence": "good " * 300, "n_steps": 2}, headers=headers)))
    assert record.case(long["truncated"] is True and len(long["tokens"]) == limits["max_tokens"])
    edge = post_json(url, {"sequence": "good", "n_steps": limits["max_steps"]}, headers=headers)
    assert record.case(edge.status_code == 200)


def test_archive_paths_leading_outside_are_not_followed(tmp_path, tally):
    """The handler refuses a model-config.yaml whose weights/config/tokenizer path leaves the unpacked archive
    ("../x", or a link inside the archive pointing out) instead of loading from there."""
    import importlib.util
    import types

    import yaml

    from serve.conftest import ROOT

    record = tally("5 security")
    spec = importlib.util.spec_from_file_location("intgrads_handler_under_test", ROOT / "handler" / "intgrads_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    outside = tmp_path / "outside"
    outside.mkdir()
    for label, settings in (("dotdot-tokenizer", {"tokenizer": "../outside"}),
                            ("dotdot-config", {"config": "../outside/config.json"}),
                            ("link-weights", {"weights": "weights"})):
        model_dir = tmp_path / label
        model_dir.mkdir()
        if label == "link-weights":
            (model_dir / "weights").symlink_to(outside)
        full = {"family": "hf", "weights": "weights", **settings}
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump({"intgrads": full}))
        context = types.SimpleNamespace(system_properties={"model_dir": str(model_dir)}, model_name="m",
                                        model_yaml_config={})
        with pytest.raises(ValueError) as caught:
            module.IntgradsHandler().initialize(context)
        assert record.case("leads outside the archive" in str(caught.value)), (label, str(caught.value))


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_hf_model_link_outside_its_directory_is_not_packed(demo_server, shared_store, tmp_path, tally, kind):
    """--hf-model DIR is packed whole; a link in it (a file, or a folder) leading out of DIR is refused with
    exit 2 before any archive is built, instead of copying what it points at into the .mar."""
    from intgrads.launcher.demo import DEMO_NAME

    record = tally("5 security")
    demo_dir = shared_store / DEMO_NAME
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("not for the archive")
    model = tmp_path / "model"
    shutil.copytree(demo_dir, model)
    if kind == "file":
        (model / "notes.txt").symlink_to(outside / "id_rsa")
    else:
        (model / "extras").mkdir()
        (model / "extras" / "more").symlink_to(outside, target_is_directory=True)
    _, result = launch(tmp_path / "home", tmp_path / "store", ["--hf-model", model, "--model-name", "linked"],
                       check=False)
    assert record.case(result.returncode == 2 and "leads outside the directory" in result.stderr
                       and "--hf-model" in result.stderr), result.stderr[-1500:]
    assert record.case(not (tmp_path / "store" / "linked.mar").exists())
