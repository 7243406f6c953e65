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


def test_query_string_options_join_the_body():
    """A front end that sees the query string (Ray) passes it on: its fields join the body's, typed as form fields;
    the same field twice, or with two values in the query and the body, is a 400."""
    joined = parse_request({"body": b'{"sequence": "good"}'}, JSON, query=[("n_steps", "7"), ("method", "riemann_left")])
    assert joined.options["n_steps"] == 7 and joined.options["method"] == "riemann_left"
    same = parse_request({"body": b'{"sequence": "good", "n_steps": 7}'}, JSON, query=[("n_steps", "7")])
    assert same.options["n_steps"] == 7
    only_query = parse_request({}, {}, query=[("sequence", "a fine film"), ("n_steps", "3")])
    assert only_query.sequences == ["a fine film"] and only_query.options["n_steps"] == 3
    for query, body, words in (([("n_steps", "7")], b'{"sequence": "good", "n_steps": 8}', "is 7 in the query string and 8"),
                               ([("n_steps", "7"), ("n_steps", "8")], b'{"sequence": "good"}', "the query string gives"),
                               ([("colour", "red")], b'{"sequence": "good"}', "in the query string")):
        with pytest.raises(RequestError, match=words):
            parse_request({"body": body}, JSON, query=query)
    with pytest.raises(RequestError) as refused:   # TorchServe's view (no query) keeps its hint
        parse_request({"body": b""}, JSON)
    assert "query string" in refused.value.message


def test_raw_bodies_become_the_parts_a_handler_reads():
    from intgrads.serving.body import body_parts

    form = "application/x-www-form-urlencoded"
    parts, kind = body_parts(b'{"sequence": "good"}', form)          # the old tool's bare curl -d
    assert parts == {"body": b'{"sequence": "good"}'} and kind == "application/json"
    assert parse_request(parts, {"content-type": kind}).sequences == ["good"]
    parts, kind = body_parts(b"sequence=a+fine+film&n_steps=3", form)
    assert parts == {"sequence": b"a fine film", "n_steps": b"3"} and kind == form
    assert parse_request(parts, {"content-type": kind}).options["n_steps"] == 3
    with pytest.raises(RequestError, match='the form gives "sequence" twice'):
        body_parts(b"sequence=a&sequence=b", form)
    with pytest.raises(RequestError, match="not valid UTF-8"):
        body_parts(b"sequence=%ff", form)
    multipart = (b"--XX\r\nContent-Disposition: form-data; name=\"sequence\"\r\n\r\na fine film\r\n"
                 b"--XX\r\nContent-Disposition: form-data; name=\"n_steps\"\r\n\r\n5\r\n--XX--\r\n")
    parts, _ = body_parts(multipart, "multipart/form-data; boundary=XX")
    assert parts == {"sequence": b"a fine film", "n_steps": b"5"}
    assert body_parts(b"just text", "text/plain") == ({"body": b"just text"}, "text/plain")
    assert body_parts(b"", "application/json") == ({}, "application/json")


def test_a_caller_on_another_machine_needs_the_key():
    """The Ray front end's check, on real Starlette requests: callers on this machine pass; others need
    ``Authorization: Bearer KEY``, refused like TorchServe's token check (the client stops on it)."""
    pytest.importorskip("ray")
    from starlette.requests import Request

    from intgrads.rayserve.http import Refused, check_key

    def request(host, authorization=None):
        headers = [(b"authorization", authorization.encode())] if authorization else []
        return Request({"type": "http", "method": "POST", "path": "/predictions/demo", "headers": headers,
                        "client": (host, 50000), "query_string": b""})

    check_key(request("127.0.0.1"), "k3y")
    check_key(request("::1"), "k3y")
    check_key(request("192.0.2.9"), None)          # no key set: nothing asked
    check_key(request("192.0.2.9", "Bearer k3y"), "k3y")
    for sent in (None, "Bearer wrong", "k3y"):
        with pytest.raises(Refused) as refused:
            check_key(request("192.0.2.9", sent), "k3y")
        assert refused.value.reply.status == 401 and "Token Authorization failed" in refused.value.reply.body


def test_n_steps_auto_with_its_tolerance_and_cap():
    """JSON and form: "auto" fills in tolerance 0.01 and max_steps 128 (or the server's --max-steps when lower);
    naming "idgi" in outputs asks the engine for it and brings its token sums."""
    auto = parse_request({"body": b'{"sequence": "good", "n_steps": "auto"}'}, JSON)
    assert auto.options["n_steps"] == "auto" and (auto.options["tolerance"], auto.options["max_steps"]) == (0.01, 128)
    low = parse_request({"body": {"sequence": "good", "n_steps": "auto"}}, JSON, limits={"max_steps": 40})
    assert low.options["max_steps"] == 40
    form = parse_request({"sequence": b"good", "n_steps": b"auto", "tolerance": b"0.001", "max_steps": b"64",
                          "outputs": b"token_attributions,idgi"}, {})
    assert (form.options["n_steps"], form.options["tolerance"], form.options["max_steps"]) == ("auto", 0.001, 64)
    assert form.options["idgi"] is True
    assert form.encoding["outputs"] == ["token_attributions", "idgi", "idgi_token_attributions"]
    fixed = parse_request({"body": {"sequence": "good", "n_steps": 8}}, JSON)
    assert "tolerance" not in fixed.options and "max_steps" not in fixed.options and "idgi" not in fixed.options


@pytest.mark.parametrize("fields, status, words", [
    ({"n_steps": "automatic"}, 400, 'n_steps must be an integer from 1 to 500, or "auto"'),
    ({"n_steps": "auto", "tolerance": 0}, 400, "tolerance must be a number between 0 and 1"),
    ({"n_steps": "auto", "tolerance": 1}, 400, "tolerance must be a number between 0 and 1"),
    ({"n_steps": "auto", "tolerance": -0.5}, 400, "tolerance must be"),
    ({"n_steps": "auto", "tolerance": "0.01"}, 400, "tolerance must be"),
    ({"n_steps": "auto", "tolerance": True}, 400, "tolerance must be"),
    ({"n_steps": "auto", "tolerance": None}, 400, "tolerance must be"),
    ({"n_steps": "auto", "max_steps": 8}, 400, "max_steps must be an integer from 9 to 500"),
    ({"n_steps": "auto", "max_steps": 64.5}, 400, "max_steps must be an integer"),
    ({"n_steps": "auto", "max_steps": 501}, 413, "max_steps is 501; this server takes at most 500"),
    ({"n_steps": 20, "tolerance": 0.01}, 400, 'tolerance and max_steps go with "n_steps": "auto"'),
    ({"max_steps": 64}, 400, 'tolerance and max_steps go with "n_steps": "auto"'),
], ids=["not-auto", "tol-0", "tol-1", "tol-negative", "tol-string", "tol-bool", "tol-null", "cap-low", "cap-float",
        "cap-over-limit", "tol-without-auto", "cap-without-auto"])
def test_bad_auto_fields(fields, status, words):
    with pytest.raises(RequestError) as error:
        parse_request({"body": {"sequence": "good", **fields}}, JSON)
    assert error.value.status == status and words in error.value.message


def test_bad_auto_form_fields_and_a_server_too_small_for_auto():
    with pytest.raises(RequestError) as error:
        parse_request({"sequence": b"good", "n_steps": b"auto", "tolerance": b"tight"}, {})
    assert error.value.status == 400 and "tolerance must be a number between 0 and 1" in error.value.message
    with pytest.raises(RequestError) as error:
        parse_request({"body": {"sequence": "good", "n_steps": "auto"}}, JSON, limits={"max_steps": 8})
    assert error.value.status == 413 and "starts with 9 points" in error.value.message


def test_guards_count_auto_at_its_cap(bundles):
    """The answer-size and work checks count an auto request at max_steps (it may need fewer) and say so."""
    from intgrads.serving.guards import check_answer_size, check_work

    model = bundles["bert"].model
    auto = parse_request({"body": {"sequence": "good", "n_steps": "auto", "max_steps": 100}}, JSON)
    fixed = parse_request({"body": {"sequence": "good", "n_steps": 100}}, JSON)
    with pytest.raises(RequestError) as size:
        check_answer_size(auto, [300], 384, limit=estimate_answer_bytes(300, 384, 99))
    assert size.value.status == 413 and "counted at its cap max_steps = 100" in size.value.message
    check_answer_size(auto, [300], 384, limit=2 * estimate_answer_bytes(300, 384, 100))
    with pytest.raises(RequestError) as work:
        check_work(auto, [300], model, budget_gmac=1.0, response_timeout=60)
    with pytest.raises(RequestError) as same:
        check_work(fixed, [300], model, budget_gmac=1.0, response_timeout=60)
    assert work.value.extra["work_gmac"] == same.value.extra["work_gmac"]
    assert "n_steps auto, counted at its cap" in work.value.message and "lower max_steps" in work.value.message
    assert "max_steps" not in same.value.message
    big = parse_request({"body": {"sequence": "good", "n_steps": "auto", "max_steps": 400}}, JSON)
    with pytest.raises(RequestError) as most:   # the rule never uses more than 3 x 63 points
        check_work(big, [300], model, budget_gmac=1.0, response_timeout=60)
    assert "189 steps" in most.value.message
