"""Reliability: malformed requests against a real TorchServe (the demo model). Each gets a 4xx JSON error naming
the problem, or for odd-but-valid text a correct answer; the worker keeps its PID and a reference request answers
the same bytes before and after. Reuses the 40 cases of tests/serve/test_serve_requests.py and adds more."""

from __future__ import annotations

import json

import pytest
import requests
import torch

import intgrads
from serve.test_serve_answers import assert_same_answer
from serve.test_serve_requests import BAD_REQUESTS as SERVE_CASES

from .conftest import DEMO, REFERENCE, answer_of, load

JSON = {"Content-Type": "application/json"}
GOOD = "a fine film"
MB = 1 << 20


def _j(**fields):
    return dict(data=json.dumps({"sequence": GOOD, **fields}).encode(), headers=JSON)


def _raw(body: bytes, content_type="application/json"):
    return dict(data=body, headers={"Content-Type": content_type})


# (id, how to send it, status, words the error must contain) -- none of these is in tests/serve's table
MORE_CASES = [
    # bodies that are not (usable) JSON
    ("raw-nul-in-json", _raw(b'{"sequence": "a\x00b"}'), 400, "not valid JSON"),
    ("json-with-bom", _raw(b'\xef\xbb\xbf{"sequence": "good"}'), 400, "not valid JSON"),
    ("json-true", _raw(b"true"), 400, "must be an object"),
    ("form-body-as-json", _raw(b"sequence=good&n_steps=8"), 400, "not valid JSON"),
    ("truncated-object", _raw(b'{"sequence": "good", "n_steps": 8'), 400, "not valid JSON"),
    ("nested-too-deep", _raw(b'{"sequence": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400, "nested too deeply"),
    ("integer-5000-digits", _raw(b'{"sequence": "good", "n_steps": ' + b"9" * 5000 + b"}"), 400, "not valid JSON"),
    ("invalid-utf8-in-json", _raw(b'{"sequence": "\xff\xfe good"}'), 400, "not valid UTF-8"),
    ("lone-surrogate", _raw(b'{"sequence": "good \\ud800 film"}'), 400, "unpaired surrogate"),
    ("xml-content-type", _raw(b"<sequence>good</sequence>", "application/xml"), 415, "Content-Type"),
    # the sentence(s)
    ("sequence-object", _j(sequence={"text": "good"}), 400, "sequence must be a string"),
    ("sequence-bool", _j(sequence=False), 400, "sequence must be a string"),
    ("unicode-whitespace-only", _j(sequence="\u00a0\u2003\u3000\n"), 400, "sequence is empty"),
    ("zero-width-only", _j(sequence="\u200b\u200b"), 400, "no visible character"),
    ("control-only", _j(sequence="\x01\x02\u200d"), 400, "no visible character"),
    ("sequences-null", dict(data=b'{"sequences": null}', headers=JSON), 400, "sequences must be a list"),
    ("sequences-of-objects", dict(data=b'{"sequences": [{"a": 1}]}', headers=JSON), 400,
     "sequences[0] must be a string"),
    ("mixed-batch-empty", dict(data=json.dumps({"sequences": ["good", "", "fine"]}).encode(), headers=JSON), 400,
     "sequences[1] is empty"),
    ("mixed-batch-null", dict(data=json.dumps({"sequences": ["good", "fine", None]}).encode(), headers=JSON), 400,
     "sequences[2] must be a string"),
    ("mixed-batch-nul", dict(data=json.dumps({"sequences": ["good", "a\u0000b"]}).encode(), headers=JSON), 400,
     "sequences[1] contains a NUL"),
    ("mixed-batch-too-long", dict(data=json.dumps({"sequences": ["good", "x" * 100_001]}).encode(), headers=JSON),
     413, "sequences[1] has 100001 characters"),
    ("body-just-under-1mb-too-many-chars", _j(sequence="good " * 209_000), 413, "at most 100000"),
    ("body-1mb-plus-1", _raw(b'{"sequence": "' + b"a" * (MB - 15) + b'"}'), 413, "at most 1048576"),
    ("body-50mb", _raw(b'{"sequence": "' + b"a" * (50 * MB) + b'"}'), 413, "at most 1048576"),
    # unknown fields
    ("typo-n_step", _j(n_step=8), 400, "unknown field(s) 'n_step'"),
    ("capitalised-field", dict(data=b'{"Sequence": "good"}', headers=JSON), 400, "unknown field"),
    ("many-unknown-fields", _j(**{f"f{i}": i for i in range(1000)}), 400, "unknown field"),
    # options out of range / of the wrong type
    ("n-steps-negative", _j(n_steps=-5), 400, "n_steps must be"),
    ("n-steps-huge-int", _j(n_steps=10 ** 30), 413, "at most 500"),
    ("n-steps-501", _j(n_steps=501), 413, "at most 500"),
    ("n-steps-null", _j(n_steps=None), 400, "n_steps must be an integer"),
    ("n-steps-bool", _j(n_steps=True), 400, "n_steps must be an integer"),
    ("n-steps-nan", _raw(b'{"sequence": "good", "n_steps": NaN}'), 400, "n_steps must be an integer"),
    ("n-steps-inf", _raw(b'{"sequence": "good", "n_steps": 1e400}'), 400, "n_steps must be an integer"),
    ("n-steps-list", _j(n_steps=[8]), 400, "n_steps must be an integer"),
    ("target-huge", _j(target=10 ** 30), 400, "target must be an integer from 0 to 1"),
    ("target-null", _j(target=None), 400, "target must be"),
    ("target-predicted-typo", _j(target="Predicted "), 400, "target must be"),
    ("target-list", _j(target=[1]), 400, "target must be"),
    ("method-null", _j(method=None), 400, "method must be one of"),
    ("method-wrong-case", _j(method="GaussLegendre"), 400, "method must be one of"),
    ("baseline-number", _j(baseline=0), 400, "baseline must be one of"),
    ("baseline-empty", _j(baseline=""), 400, "baseline must be one of"),
    ("keep-special-int", _j(keep_special_tokens=1), 400, "keep_special_tokens must be true or false"),
    ("keep-special-null", _j(keep_special_tokens=None), 400, "keep_special_tokens must be true or false"),
    ("internal-batch-negative", _j(internal_batch_size=-1), 400, "internal_batch_size"),
    ("internal-batch-string", _j(internal_batch_size="4"), 400, "internal_batch_size"),
    ("internal-batch-float", _j(internal_batch_size=2.5), 400, "internal_batch_size"),
    ("precision-short-name", _j(precision="bf16"), 400, "precision must be one of float32, bfloat16, float16"),
    ("precision-number", _j(precision=16), 400, "precision must be one of"),
    ("form-precision-word", dict(data={"sequence": "good", "precision": "half"}), 400, "precision must be one of"),
    ("form-target-word", dict(data={"sequence": "good", "target": "best"}), 400, "target must be an integer"),
    ("form-keep-special-word", dict(data={"sequence": "good", "keep_special_tokens": "maybe"}), 400,
     "keep_special_tokens must be true or false"),
]

# Odd but valid text: a 200 answer equal to the engine's for the same text.
ODD_VALID = [
    ("emoji", "good 👍🏽 movie 🎬🍿"),
    ("hebrew-rtl", "הסרט היה נהדר"),
    ("arabic-rtl", "فيلم جيد جدا"),
    ("rtl-override", "\u202egood movie\u202c"),
    ("control-chars", "\x01\x02 good"),
    ("special-tokens-only", "[CLS] [SEP]"),
    ("markup", "<script>alert(1)</script> good"),
    ("combining-marks", "cafe\u0301 is gre\u0301at"),
]


def test_table_is_big_and_distinct():
    names = [case[0] for case in SERVE_CASES + MORE_CASES]
    assert len(names) == len(set(names))
    assert len(MORE_CASES) >= 40 and len(names) >= 80


@pytest.fixture(scope="module")
def reference(demo_server):
    server = demo_server["server"]
    return {"pids": server.worker_pids(DEMO), "bytes": answer_of(server, REFERENCE)}


def _check(server, name, kwargs, status, words, failures) -> bool:
    try:
        response = requests.post(server.url(DEMO), timeout=120, **kwargs)
    except requests.RequestException as error:
        failures.append(f"{name}: {type(error).__name__}: {error}")
        return False
    try:
        body = response.json()
    except ValueError:
        failures.append(f"{name}: {response.status_code} not JSON: {response.text[:200]!r}")
        return False
    ok = (response.status_code == status and words in body.get("error", "")
          and response.headers.get("Content-Type", "").startswith("application/json"))
    if not ok:
        failures.append(f"{name}: {response.status_code} {response.headers.get('Content-Type')} {str(body)[:300]}")
    return ok


@pytest.mark.parametrize("table", ["serve-table", "more"])
def test_malformed_requests_get_4xx_json(demo_server, reference, tally, table):
    server = demo_server["server"]
    cases = SERVE_CASES if table == "serve-table" else MORE_CASES
    record = tally("1 bad input")
    failures = []
    for name, kwargs, status, words in cases:
        record.case(_check(server, name, kwargs, status, words, failures))
    assert not failures, "\n".join(failures)
    assert server.worker_pids(DEMO) == reference["pids"]
    assert answer_of(server, REFERENCE) == reference["bytes"]


def test_body_over_max_request_size_is_cut_by_torchserve(demo_server, reference, tally):
    """Over config.properties' max_request_size (64 MiB) TorchServe itself answers: a bare 413 (no JSON body),
    the worker never sees the request and lives on."""
    server = demo_server["server"]
    props = (server.run_dir / "config.properties").read_text()
    limit = int(next(line.split("=", 1)[1] for line in props.splitlines() if line.startswith("max_request_size=")))
    body = b'{"sequence": "' + b"a" * (limit + MB) + b'"}'
    try:
        response = requests.post(server.url(DEMO), data=body, headers=JSON, timeout=120)
        status = response.status_code
    except requests.ConnectionError:       # TorchServe may close the connection while the body is still coming
        status = "connection closed"
    del body
    ok = tally("1 bad input").case(status in (413, "connection closed"))
    assert ok, status
    assert server.worker_pids(DEMO) == reference["pids"]
    assert answer_of(server, REFERENCE) == reference["bytes"]


def test_odd_but_valid_text_gets_a_correct_answer(demo_server, demo_bundle, reference, tally):
    server = demo_server["server"]
    record = tally("1 bad input")
    failures = []
    before = torch.get_num_threads()
    torch.set_num_threads(2 if (torch.get_num_threads() >= 2) else 1)
    try:
        for name, text in ODD_VALID:
            try:
                served = load(answer_of(server, {"sequence": text, "n_steps": 4}))
                direct = intgrads.attribute(demo_bundle, text, n_steps=4)
                assert_same_answer(served, direct, atol=1e-5)
                assert served["tokens"][0] == "[CLS]" and served["tokens"][-1] == "[SEP]"
                record.case(True)
            except AssertionError as error:
                record.case(False)
                failures.append(f"{name}: {str(error)[:300]}")
    finally:
        torch.set_num_threads(before)
    assert not failures, "\n".join(failures)
    assert server.worker_pids(DEMO) == reference["pids"]
    assert answer_of(server, REFERENCE) == reference["bytes"]
