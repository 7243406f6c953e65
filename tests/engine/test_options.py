"""Options: validation, target="predicted", truncation, chunking and batches of sentences."""

from __future__ import annotations

import pytest
import torch

import intgrads

SENTENCE = "the movie was good but the ending felt rushed."
# different lengths; the middle one is the longest, so the others are padded (XLNet on the left)
SENTENCES = ["the plot was silly.",
             "the movie was good but the ending felt rushed and the music was too loud.",
             "her performance is honest and funny."]
N_STEPS = 7

BAD_OPTIONS = [
    ("method", "simpson", ("gausslegendre", "riemann_trapezoid")),
    ("baseline", "foo", ("zero", "rand-norm")),
    ("target", 5, ()),
    ("target", -1, ()),
    ("target", "x", ()),
    ("target", 1.0, ()),
    ("target", True, ()),
    ("n_steps", 0, ()),
    ("n_steps", 1001, ()),
    ("n_steps", "a", ()),
    ("n_steps", 7.0, ()),
    ("internal_batch_size", 0, ()),
    ("internal_batch_size", -3, ()),
    ("max_tokens", 0, ()),
    ("max_tokens", "5", ()),
    ("precision", "bf16", ("float32", "bfloat16", "float16")),
    ("precision", None, ("float32", "bfloat16", "float16")),
]


@pytest.mark.parametrize("option,value,allowed", BAD_OPTIONS,
                         ids=[f"{o}={v!r}" for o, v, _ in BAD_OPTIONS])
@pytest.mark.parametrize("model", ("bert", "xlnet"))
def test_bad_option_is_a_value_error_naming_it(bundles, model, option, value, allowed):
    with pytest.raises(ValueError) as error:
        intgrads.attribute(bundles[model], SENTENCE, **{"n_steps": 2, option: value})
    message = str(error.value)
    assert option in message
    for word in allowed:
        assert word in message


def test_target_message_gives_the_range(bundles):
    with pytest.raises(ValueError, match="target") as error:
        intgrads.attribute(bundles["bert"], SENTENCE, target=5)
    assert "predicted" in str(error.value) and "1" in str(error.value)


@pytest.mark.parametrize("n_steps", (1, 1000))
def test_n_steps_limits_are_accepted(bundles, n_steps):
    # 1000 steps on the tiny XLNet is cheap
    answer = intgrads.attribute(bundles["xlnet"], "good", n_steps=n_steps)
    assert answer["n_steps"] == n_steps and answer["intermediate_gradients"].shape[0] == n_steps


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_target_predicted_is_argmax(bundles, model):
    for sentence in (SENTENCE, "the plot was silly and the music awful.", "her performance is honest."):
        answer = intgrads.attribute(bundles[model], sentence, target="predicted", n_steps=3)
        predicted = int(answer["logits"].argmax())
        assert answer["target"] == predicted and isinstance(answer["target"], int)
        explicit = intgrads.attribute(bundles[model], sentence, target=predicted, n_steps=3)
        assert torch.equal(answer["integrated_gradients"], explicit["integrated_gradients"])


def test_target_predicted_per_sentence_in_a_list(bundles):
    answers = intgrads.attribute(bundles["xlnet"], SENTENCES, target="predicted", n_steps=3)
    for answer in answers:
        assert answer["target"] == int(answer["logits"].argmax())


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_max_tokens_truncates_keeping_special_tokens(cases, bundles, model):
    case = cases[model]
    answer = intgrads.attribute(bundles[model], SENTENCE, n_steps=3, max_tokens=5)
    assert answer["truncated"] is True
    assert answer["input_ids"].shape == (1, 5)
    assert answer["integrated_gradients"].shape[1] == 5 and answer["intermediates"].shape[1] == 5
    assert answer["token_attributions"].shape == (5,)
    expected = case.tokenizer(SENTENCE, truncation=True, max_length=5)["input_ids"]
    assert answer["input_ids"][0].tolist() == expected
    special = {case.tokenizer.cls_token, case.tokenizer.sep_token}
    if model == "xlnet":
        assert answer["tokens"][-2:] == ["<sep>", "<cls>"]
    else:
        assert answer["tokens"][0] == "[CLS]" and answer["tokens"][-1] == "[SEP]"
    assert sum(token in special for token in answer["tokens"]) == 2
    # without max_tokens the same sentence is longer and not truncated
    full = intgrads.attribute(bundles[model], SENTENCE, n_steps=3)
    assert full["truncated"] is False and full["input_ids"].shape[1] > 5


def test_max_tokens_exactly_the_length_is_not_truncated(cases, bundles):
    length = len(cases["bert"].tokenizer(SENTENCE)["input_ids"])
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method="riemann_left", max_tokens=length)
    assert answer["truncated"] is False and answer["input_ids"].shape[1] == length
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method="riemann_left",
                                max_tokens=length - 1)
    assert answer["truncated"] is True and answer["input_ids"].shape[1] == length - 1


def test_truncated_answer_matches_captum_on_the_truncated_tokens(bert_case, bundles):
    """IG of a truncated sentence = captum on the tokenizer's truncated encoding."""
    from captum.attr import LayerIntegratedGradients

    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=5, max_tokens=6, baseline="mask")
    encoded = bert_case.encode(SENTENCE, truncation=True, max_length=6)
    ids = encoded["input_ids"]
    assert ids.shape == (1, 6)
    baseline_ids = torch.full_like(ids, bert_case.tokenizer.mask_token_id)

    def forward(input_ids, token_type_ids, attention_mask):
        return bert_case.model(input_ids=input_ids, token_type_ids=token_type_ids,
                               attention_mask=attention_mask).logits

    expected = LayerIntegratedGradients(forward, bert_case.model.bert.embeddings).attribute(
        ids, baselines=baseline_ids, target=1, n_steps=5,
        additional_forward_args=(encoded["token_type_ids"], encoded["attention_mask"]))
    torch.testing.assert_close(answer["integrated_gradients"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
@pytest.mark.parametrize("chunk", (1, 3, 6))
def test_chunked_equals_unchunked(bundles, model, chunk):
    whole = intgrads.attribute(bundles[model], SENTENCE, n_steps=N_STEPS, baseline="period")
    parts = intgrads.attribute(bundles[model], SENTENCE, n_steps=N_STEPS, baseline="period",
                               internal_batch_size=chunk)
    for key in ("integrated_gradients", "intermediate_gradients", "intermediates", "step_sizes", "logits",
                "token_attributions"):
        torch.testing.assert_close(parts[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)
    assert parts["convergence_delta"] == pytest.approx(whole["convergence_delta"], abs=1e-5)


def test_chunked_batch_of_sentences(bundles):
    whole = intgrads.attribute(bundles["xlnet"], SENTENCES, n_steps=N_STEPS)
    parts = intgrads.attribute(bundles["xlnet"], SENTENCES, n_steps=N_STEPS, internal_batch_size=4)
    for one, other in zip(whole, parts):
        torch.testing.assert_close(other["integrated_gradients"], one["integrated_gradients"], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
@pytest.mark.parametrize("baseline,keep", [("zero", False), ("pad", True), ("rand-norm", False)])
def test_batch_equals_single_sentences(cases, bundles, model, baseline, keep):
    lengths = [len(cases[model].tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert len(set(lengths)) == 3
    answers = intgrads.attribute(bundles[model], SENTENCES, n_steps=N_STEPS, baseline=baseline,
                                 keep_special_tokens=keep, method="riemann_middle")
    assert isinstance(answers, list) and len(answers) == 3
    for sentence, length, answer in zip(SENTENCES, lengths, answers):
        single = intgrads.attribute(bundles[model], sentence, n_steps=N_STEPS, baseline=baseline,
                                    keep_special_tokens=keep, method="riemann_middle")
        assert answer["tokens"] == single["tokens"]
        assert torch.equal(answer["input_ids"], single["input_ids"]) and answer["input_ids"].shape[1] == length
        for key in ("integrated_gradients", "intermediate_gradients", "intermediates", "logits",
                    "token_attributions"):
            assert answer[key].shape == single[key].shape, key
            torch.testing.assert_close(answer[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
        assert answer["convergence_delta"] == pytest.approx(single["convergence_delta"], abs=1e-5)


@pytest.mark.parametrize("model", ("bert", "xlnet"))
def test_batch_member_matches_captum(cases, bundles, model):
    """The shortest sentence of a batch (padded within its bucket) against captum on that sentence alone."""
    answers = intgrads.attribute(bundles[model], SENTENCES, n_steps=N_STEPS, baseline="unk")
    oracle = cases[model].captum(SENTENCES[0], n_steps=N_STEPS, baseline="unk")
    torch.testing.assert_close(answers[0]["integrated_gradients"], oracle["ig"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ("bert", "xlnet"))
def test_a_list_runs_in_buckets_of_similar_length(bundles, model):
    """A short sentence beside a five times longer one is not padded to it: it runs in its own bucket, so its
    answer is bitwise its answer alone; the long one's too."""
    short, long = "a fine film.", " ".join(["the movie was good but the ending felt rushed"] * 5)
    answers = intgrads.attribute(bundles[model], [long, short], n_steps=N_STEPS)
    for sentence, answer in zip((long, short), answers):
        alone = intgrads.attribute(bundles[model], sentence, n_steps=N_STEPS)
        for key in ("integrated_gradients", "intermediate_gradients", "logits"):
            assert torch.equal(answer[key], alone[key]), key


def test_single_item_list_gives_a_list(bundles):
    answers = intgrads.attribute(bundles["bert"], [SENTENCE], n_steps=2, method="riemann_left")
    assert isinstance(answers, list) and len(answers) == 1
    single = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method="riemann_left")
    assert isinstance(single, dict)
    torch.testing.assert_close(answers[0]["integrated_gradients"], single["integrated_gradients"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("value", ["", "   ", [], [""], [3], None])
def test_bad_sequences_are_value_errors(bundles, value):
    with pytest.raises(ValueError):
        intgrads.attribute(bundles["bert"], value, n_steps=2, method="riemann_left")


@pytest.mark.parametrize("method", ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"))
def test_riemann_rules_need_two_steps(bundles, method):
    """As captum (which asserts n > 1 for its Riemann rules): one step is refused, naming n_steps."""
    with pytest.raises(ValueError, match="n_steps"):
        intgrads.attribute(bundles["bert"], SENTENCE, n_steps=1, method=method)
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method=method)
    assert answer["n_steps"] == 2


def test_max_tokens_too_small_for_the_special_tokens(bundles):
    with pytest.raises(ValueError, match="max_tokens"):
        intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, max_tokens=2)
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, max_tokens=3)
    assert answer["tokens"][0] == "[CLS]" and answer["tokens"][-1] == "[SEP]" and len(answer["tokens"]) == 3
