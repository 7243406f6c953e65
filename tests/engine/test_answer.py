"""The answer dict: token-level fields, types, and the wire format (gzip(torch.save))."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import torch

import intgrads

SENTENCE = "the movie was good but the ending felt rushed."
SENTENCES = ["the plot was silly.", "her performance is honest and funny."]
N_STEPS = 5

KEYS = {"integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates", "tokens", "input_ids",
        "token_attributions", "logits", "convergence_delta", "target", "n_steps", "method", "baseline", "layer",
        "truncated", "keep_special_tokens", "family", "layout", "activation", "warnings"}
TENSOR_KEYS = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates", "input_ids",
               "token_attributions", "logits")


@pytest.fixture(scope="module")
def answers(bundles):
    return {model: intgrads.attribute(bundles[model], SENTENCE, n_steps=N_STEPS, baseline="period")
            for model in ("bert", "xlnet", "hf")}


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_keys_types_and_shapes(answers, bundles, model):
    answer = answers[model]
    assert KEYS <= set(answer)
    seq = answer["input_ids"].shape[1]
    hidden = bundles[model].word_embedding.weight.shape[1]
    assert answer["input_ids"].dtype == torch.int64 and answer["input_ids"].shape == (1, seq)
    assert answer["integrated_gradients"].shape == (1, seq, hidden)
    assert answer["intermediate_gradients"].shape == (N_STEPS, seq, hidden)
    assert answer["intermediates"].shape == (N_STEPS, seq, hidden)
    assert answer["step_sizes"].shape == (N_STEPS, 1)
    assert answer["token_attributions"].shape == (seq,)
    assert answer["logits"].shape == (1, 2)
    for key in TENSOR_KEYS:
        assert answer[key].device == torch.device("cpu"), key
        assert not answer[key].requires_grad, key
        if key != "input_ids":
            assert answer[key].dtype == torch.float32, key
    assert isinstance(answer["tokens"], list) and all(isinstance(t, str) for t in answer["tokens"])
    assert isinstance(answer["convergence_delta"], float)
    assert isinstance(answer["target"], int) and isinstance(answer["n_steps"], int)
    for key in ("method", "baseline", "layer", "family", "layout"):
        assert isinstance(answer[key], str), key
    for key in ("truncated", "keep_special_tokens"):
        assert isinstance(answer[key], bool), key


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_tokens_and_token_attributions(cases, answers, model):
    answer = answers[model]
    tokenizer = cases[model].tokenizer
    ids = tokenizer(SENTENCE)["input_ids"]
    assert answer["input_ids"][0].tolist() == ids
    assert answer["tokens"] == tokenizer.convert_ids_to_tokens(answer["input_ids"][0].tolist())
    assert tokenizer.unk_token not in answer["tokens"]
    if model == "xlnet":
        assert answer["tokens"][-2:] == ["<sep>", "<cls>"]
    else:
        assert answer["tokens"][0] == "[CLS]" and answer["tokens"][-1] == "[SEP]"
    torch.testing.assert_close(answer["token_attributions"], answer["integrated_gradients"][0].sum(-1),
                               rtol=1e-6, atol=1e-7)


def _assert_same(decoded, answer):
    assert set(decoded) == set(answer)
    for key, value in answer.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(decoded[key], torch.Tensor) and decoded[key].dtype == value.dtype, key
            assert torch.equal(decoded[key], value), key
        else:
            assert decoded[key] == value, key


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_encode_decode_round_trip(answers, model):
    answer = answers[model]
    payload = intgrads.encode_answer(answer)
    assert isinstance(payload, bytes) and payload[:2] == b"\x1f\x8b"  # gzip
    _assert_same(intgrads.decode_answer(payload), answer)


def test_seed_tool_snippet_reads_the_payload(answers, tmp_path):
    """The old tool's reader: gzip.open -> BytesIO -> torch.load(weights_only=True)."""
    answer = answers["bert"]
    path = tmp_path / "answer.gz"
    path.write_bytes(intgrads.encode_answer(answer))
    with gzip.open(path, "rb") as handle:
        buffer = io.BytesIO(handle.read())
    _assert_same(torch.load(buffer, weights_only=True), answer)
    # and through gzip.open on an in-memory payload
    with gzip.open(io.BytesIO(intgrads.encode_answer(answer)), "rb") as handle:
        _assert_same(torch.load(io.BytesIO(handle.read()), weights_only=True), answer)
    _assert_same(intgrads.load_answer(path), answer)


def test_list_of_answers_round_trips(bundles):
    answers = intgrads.attribute(bundles["xlnet"], SENTENCES, n_steps=3)
    decoded = intgrads.decode_answer(intgrads.encode_answer(answers))
    assert isinstance(decoded, list) and len(decoded) == 2
    for one, other in zip(decoded, answers):
        _assert_same(one, other)
    raw = torch.load(io.BytesIO(gzip.decompress(intgrads.encode_answer(answers))), weights_only=True)
    assert len(raw) == 2


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_summary_is_json(answers, model):
    answer = answers[model]
    summary = intgrads.summarize_answer(answer)
    text = json.dumps(summary)
    assert json.loads(text) == summary
    for key in ("tokens", "token_attributions", "probabilities", "predicted", "label", "target",
                "convergence_delta", "n_steps", "method", "baseline", "keep_special_tokens", "layer", "truncated",
                "family", "layout", "activation", "warnings"):
        assert key in summary, key
    assert summary["tokens"] == answer["tokens"]
    assert summary["token_attributions"] == pytest.approx(answer["token_attributions"].tolist())
    probabilities = torch.softmax(answer["logits"][0].double(), 0).tolist()
    assert summary["probabilities"] == pytest.approx(probabilities)
    assert summary["predicted"] == int(answer["logits"].argmax())
    assert "integrated_gradients" not in summary and "intermediates" not in summary
