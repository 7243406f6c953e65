"""intgrads.serving.request without a server: the shapes TorchServe hands the handler, with and without its own
decoding (a bare ``torchserve`` decodes JSON and text bodies; the launcher's config turns that off)."""

from __future__ import annotations

import pytest

from intgrads.serving.request import RequestError, parse_request, wants_json
from intgrads.answer.keys import estimate_answer_bytes

JSON = {"Content-Type": "application/json", "Host": "example:8888"}


def test_raw_and_decoded_json_give_the_same_request():
    raw = parse_request({"body": b'{"sequence": "good", "n_steps": 7, "target": "predicted"}'}, JSON)
    decoded = parse_request({"body": {"sequence": "good", "n_steps": 7, "target": "predicted"}}, JSON)
    assert raw == decoded
    assert raw.sequences == ["good"] and raw.single and raw.options["n_steps"] == 7
    assert raw.options["target"] == "predicted" and raw.options["method"] == "gausslegendre"
    assert raw.given == ["target", "n_steps"]


def test_text_bodies_forms_and_defaults():
    plain = parse_request({"body": "a fine film"}, {"Content-Type": "text/plain"}, defaults={"n_steps": 9})
    assert plain.sequences == ["a fine film"] and plain.options["n_steps"] == 9
    form = parse_request({"sequence": b"a fine film", "n_steps": b"4", "keep_special_tokens": b"true",
                          "target": b"0", "internal_batch_size": b"null"}, {})
    assert form.options == {"target": 0, "n_steps": 4, "method": "gausslegendre", "baseline": "zero",
                            "keep_special_tokens": True, "internal_batch_size": None, "precision": "float32"}
    many = parse_request({"body": b'{"sequences": ["a", "b c"]}'}, JSON)
    assert many.sequences == ["a", "b c"] and not many.single


@pytest.mark.parametrize("accept,explain,expected", [
    ("", False, False), ("*/*", False, False), ("application/json", False, True),
    ("application/gzip, application/json", False, False), ("text/html, application/json;q=0.9", False, True),
    ("", True, True),
    # q-values: q=0 refuses a type; a higher q wins over the order given
    ("application/json;q=0, application/gzip", False, False), ("application/json;q=0", False, False),
    ("application/gzip;q=0.5, application/json", False, True), ("application/json;q=abc", False, True),
])
def test_json_or_gzip(accept, explain, expected):
    assert wants_json({"accept": accept}, explain) is expected


def test_errors_name_the_problem_and_show_the_curl():
    with pytest.raises(RequestError) as empty:
        parse_request({}, JSON, model_name="bert")
    assert empty.value.status == 400
    assert "curl http://example:8888/predictions/bert -H 'Content-Type: application/json'" in empty.value.message
    with pytest.raises(RequestError) as steps:
        parse_request({"body": b'{"sequence": "a", "n_steps": 600}'}, JSON, limits={"max_steps": 500})
    assert steps.value.status == 413 and steps.value.to_json()["error"].startswith("n_steps is 600")
    with pytest.raises(RequestError) as target:
        parse_request({"body": {"sequence": "a", "target": 3}}, JSON, num_labels=3)
    assert "from 0 to 2" in target.value.message


def test_answer_size_estimate():
    # xlnet-large, 512 tokens, 50 steps: two (50, 512, 1024) float32 tensors, about 210 MB
    assert 209e6 < estimate_answer_bytes(512, 1024, 50) < 216e6


def test_answer_size_estimate_follows_dtype_and_outputs():
    # hand formula: float elements x bytes each (step sizes, alphas and step outputs: 3 per step), plus the fixed
    # small part (64 bytes a token, 4096)
    tokens, hidden, steps = 100, 768, 50
    small = 64 * tokens + 4096
    full = 4 * (tokens * hidden * (2 * steps + 1) + 3 * steps + 2 * tokens) + small
    assert estimate_answer_bytes(tokens, hidden, steps) == full
    assert estimate_answer_bytes(tokens, hidden, steps, dtype="float16") == 2 * (full - small) // 4 + small
    no_intermediates = ["integrated_gradients", "intermediate_gradients", "step_sizes", "tokens"]
    assert estimate_answer_bytes(tokens, hidden, steps, outputs=no_intermediates) == \
        4 * (tokens * hidden * (steps + 1) + 3 * steps + 2 * tokens) + small
    assert estimate_answer_bytes(tokens, hidden, steps, dtype="float16", outputs=["integrated_gradients"]) == \
        2 * (tokens * hidden + 3 * steps + 2 * tokens) + small
    # IDGI, only when named: one more (T, H) tensor and its (T,) sum
    assert estimate_answer_bytes(tokens, hidden, steps, outputs=["integrated_gradients", "idgi"]) == \
        4 * (2 * tokens * hidden + 3 * steps + 3 * tokens) + small


def test_envelope_instance_with_typed_values_is_read_as_json():
    """KServe's v1 envelope hands the handler each decoded instance as the request's parts: numbers, booleans
    and lists are JSON values there (a form's parts are always text)."""
    request = parse_request({"sequence": "a fine film", "n_steps": 20, "target": 0, "keep_special_tokens": True}, {})
    assert request.sequences == ["a fine film"] and request.single
    assert (request.options["n_steps"], request.options["target"], request.options["keep_special_tokens"]) == (20, 0, True)
    several = parse_request({"sequences": ["a", "b"], "n_steps": 4}, {})
    assert several.sequences == ["a", "b"] and not several.single
    text_only = parse_request({"sequence": "a fine film", "n_steps": "20"}, {})   # all text: read as a form
    assert text_only.options["n_steps"] == 20
    with pytest.raises(RequestError) as wrong:
        parse_request({"sequence": "a", "n_steps": 2.5}, {})
    assert wrong.value.status == 400 and "n_steps" in wrong.value.message


def test_text_plain_is_the_sentence_even_when_it_starts_with_a_brace():
    plain = parse_request({"body": b"{not json} but a fine film"}, {"Content-Type": "text/plain"})
    assert plain.sequences == ["{not json} but a fine film"]
    still_json = parse_request({"body": b'{"sequence": "good", "n_steps": 7}'}, {"Content-Type": "text/plain"})
    assert still_json.sequences == ["good"] and still_json.options["n_steps"] == 7


def test_a_key_given_twice_is_refused():
    for headers in (JSON, {"Content-Type": "text/plain"}, {}):
        with pytest.raises(RequestError) as twice:
            parse_request({"body": b'{"sequence": "good", "n_steps": 5, "n_steps": 9}'}, headers)
        assert twice.value.status == 400 and '"n_steps" twice' in twice.value.message


def test_query_strings_and_gets_are_answered_with_where_options_go():
    for parts in ({}, {"body": b""}):
        with pytest.raises(RequestError) as empty:
            parse_request(parts, {}, model_name="demo")
        assert "query string" in empty.value.message and "JSON body" in empty.value.message
    # a route that passes query parameters along with the body: refused, saying where options go
    with pytest.raises(RequestError) as both:
        parse_request({"body": b'{"sequence": "good"}', "n_steps": "5"}, JSON)
    assert "n_steps" in both.value.message and "not in the URL's query string" in both.value.message
