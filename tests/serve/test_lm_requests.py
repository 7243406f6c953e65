"""A causal LM's requests through the server's service in process (no HTTP): the fields and their 4xx messages, the
size and work guards, the description, the answer's checks, and the client's JSONL lines."""

from __future__ import annotations

import json

import pytest
import torch

import intgrads
from intgrads.answer.checks import AnswerInvalid, check_answer, decode_checked, to_torch
from intgrads.client.inputs import PromptRequest, prompt_request, read_sentences
from intgrads.launcher.tiny_lm import build_tiny_lm
from intgrads.serving.request import parse_request
from intgrads.serving.service import AttributionService, Incoming

PROMPT = "The movie was good but the"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    directory = build_tiny_lm(tmp_path_factory.mktemp("lm") / "gpt2", "gpt2", pad=False)   # eos stands in for pad
    return AttributionService(intgrads.load_model("hf", directory), model_name="lm",
                              limits={"max_response_bytes": 200_000})


def ask(service, body, **headers):
    reply = service.answer(Incoming({"body": json.dumps(body).encode()}, {"content-type": "application/json",
                                                                          **headers}))
    return reply.status, reply


def test_an_answer_and_its_summary(service):
    status, reply = ask(service, {"sequence": PROMPT, "target": " ending felt", "n_steps": 4, "score": "logit",
                                  "outputs": ["token_attributions", "intermediates"]})
    assert status == 200, reply.body
    answer = to_torch(decode_checked(reply.body))
    local = intgrads.attribute_lm(service.bundle, PROMPT, target=" ending felt", n_steps=4, score="logit",
                                  outputs=["intermediates"])
    torch.testing.assert_close(answer["token_attributions"], local["token_attributions"])
    assert "step_token_attributions" not in answer and answer["intermediates"].shape[0] == 4
    assert answer["baseline"] == "pad" and answer["score"] == "logit"
    summary = json.loads(reply.headers["X-Intgrads-Summary"])
    assert summary["kind"] == "causal_lm" and summary["total_score"] == pytest.approx(float(local["scores"].sum()),
                                                                                       abs=1e-5)
    status, reply = ask(service, {"sequence": PROMPT, "max_new_tokens": 2, "n_steps": 3}, accept="application/json")
    digest = json.loads(reply.body)
    assert status == 200 and digest["generated"] and len(digest["token_attributions"]) == len(digest["target_ids"])


@pytest.mark.parametrize("body, status, message", [
    ({"sequence": PROMPT, "target": 2}, 400, "target must be text"),
    ({"sequences": [PROMPT]}, 400, "one prompt per request"),
    ({"sequence": PROMPT, "messages": [{"role": "user", "content": "x"}]}, 400, "one of the two"),
    ({"messages": [{"role": "user"}]}, 400, "messages must be"),
    ({"sequence": PROMPT, "score": "nll"}, 400, "score must be one of logprob, prob, logit"),
    ({"sequence": PROMPT, "interpolate": "some"}, 400, "interpolate must be one of all, prompt"),
    ({"sequence": PROMPT, "contrast": " bad"}, 400, "contrast needs a target"),
    ({"sequence": PROMPT, "target": " good", "contrast": " ending felt rushed"}, 400, "as many tokens"),
    ({"sequence": PROMPT, "max_new_tokens": 0}, 400, "max_new_tokens must be"),
    ({"sequence": PROMPT, "max_new_tokens": 999}, 413, "at most 256"),
    ({"sequence": PROMPT, "baseline": "mean"}, 400, "baseline must be one of pad"),
    ({"sequence": PROMPT, "outputs": ["logits"]}, 400, "for a causal LM"),
    ({"sequence": PROMPT, "n_steps": 2000}, 413, "at most 500"),
    ({"sequence": PROMPT, "target": " word" * 300}, 413, "tokens; this server takes at most"),
    ({"sequence": PROMPT, "target": " ending", "n_steps": 400,
      "outputs": ["intermediate_gradients"]}, 413, "the answer would hold"),
])
def test_refusals(service, body, status, message):
    got, reply = ask(service, body)
    assert got == status and message in json.loads(reply.body)["error"], reply.body


def test_no_chat_template_is_a_400_and_the_description(service):
    saved, service.bundle.tokenizer.chat_template = service.bundle.tokenizer.chat_template, None
    try:
        status, reply = ask(service, {"messages": [{"role": "user", "content": "hi"}], "target": " yes"})
    finally:
        service.bundle.tokenizer.chat_template = saved
    assert status == 400 and "chat template" in json.loads(reply.body)["error"]
    described = service.describe()
    assert described["kind"] == "causal_lm" and described["architecture"] == "GPT2LMHeadModel"
    assert described["defaults"]["baseline"] == "pad" and described["chat_template"] is True


def test_form_fields_and_a_classifier_refuses_lm_fields(service):
    request = parse_request({"sequence": PROMPT.encode(), "target": b" 3", "max_new_tokens": b"4"}, causal=True)
    assert request.options["target"] == " 3" and request.options["max_new_tokens"] == 4
    with pytest.raises(Exception, match="only for a causal LM"):
        parse_request({"body": json.dumps({"sequence": "x", "score": "prob"}).encode()},
                      {"content-type": "application/json"})


def test_answer_checks_refuse_an_inconsistent_causal_answer(service):
    answer = intgrads.attribute_lm(service.bundle, PROMPT, target=" ending", n_steps=3)
    check_answer(answer)
    broken = dict(answer, token_attributions=answer["token_attributions"][:, :-1])
    with pytest.raises(AnswerInvalid, match="token_attributions"):
        check_answer(broken)


def test_jsonl_prompt_lines(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"sequence": "a plain sentence"}\n"a bare string"\n'
                      '{"sequence": "Q:", "target": " yes"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    items = read_sentences(source)
    assert items[0] == (1, "a plain sentence") and items[1] == (2, "a bare string")
    assert isinstance(items[2][1], PromptRequest) and items[2][1].fields == {"sequence": "Q:", "target": " yes"}
    assert prompt_request(str(items[3][1])).fields == {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_request("{not json") is None and prompt_request('{"sequence": "x"}') is None
    source.write_text('{"target": " yes"}\n')
    with pytest.raises(ValueError, match="needs \"sequence\""):
        read_sentences(source)


def test_the_picture_of_a_causal_answer(service, tmp_path):
    from intgrads.pictures import render_answer

    answer = intgrads.attribute_lm(service.bundle, PROMPT, target=" ending felt", n_steps=4)
    png, page = render_answer(answer, tmp_path / "lm.png"), render_answer(answer, tmp_path / "lm.html")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in page.read_text()
