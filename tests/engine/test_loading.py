"""Loading: layouts, the legacy BERT head, DataParallel prefixes, refusals, determinism."""

from __future__ import annotations

import pytest
import torch

import intgrads

SENTENCE = "the movie was good but the ending felt rushed."
N_STEPS = 7


def test_bundles_describe_themselves(bundles):
    bert, xlnet, hf = bundles["bert"], bundles["xlnet"], bundles["hf"]
    assert (bert.family, bert.layout, bert.layer_name, bert.num_labels) == ("bert", "transformers",
                                                                            "bert.embeddings", 2)
    assert (xlnet.family, xlnet.layout, xlnet.layer_name, xlnet.num_labels) == ("xlnet-base", "transformers",
                                                                                "transformer.word_embedding", 2)
    assert (hf.family, hf.layout, hf.layer_name, hf.num_labels) == ("hf", "hf", "distilbert.embeddings", 2)
    for bundle in (bert, xlnet, hf):
        assert not bundle.model.training
        assert not any(p.requires_grad for p in bundle.model.parameters())
        assert bundle.device == torch.device("cpu")
        assert len(bundle.label_names) == 2


@pytest.mark.parametrize("model", ("bert", "xlnet", "hf"))
def test_answer_names_layer_family_layout(bundles, model):
    answer = intgrads.attribute(bundles[model], SENTENCE, n_steps=2, method="riemann_left")
    bundle = bundles[model]
    assert answer["layer"] == bundle.layer_name
    assert answer["family"] == bundle.family and answer["layout"] == bundle.layout


def test_loaded_weights_are_the_files(cases, bundles):
    for name, case in cases.items():
        reference = case.model.state_dict()
        loaded = bundles[name].model.state_dict()
        for key, value in reference.items():
            if key in loaded:
                assert torch.equal(loaded[key], value), (name, key)


# ----------------------------------------------------------------------------- legacy layout


@pytest.fixture(scope="module")
def legacy_bundle(legacy_case):
    return legacy_case.load()


def test_legacy_layout_is_detected(legacy_bundle, bundles):
    assert legacy_bundle.layout == "legacy"
    assert bundles["bert"].layout == "transformers"
    answer = intgrads.attribute(legacy_bundle, SENTENCE, n_steps=2, method="riemann_left")
    assert answer["layout"] == "legacy" and answer["family"] == "bert"


def test_legacy_logits_are_the_last_layer_cls_head(legacy_case, legacy_bundle):
    """logits = h_L[:, 0] @ W.T + b, computed by hand with a plain BertModel (no pooler)."""
    from transformers import BertModel

    state = torch.load(legacy_case.files.weights, weights_only=True)
    encoder = legacy_case.model
    assert isinstance(encoder, BertModel) and encoder.pooler is None
    encoded = legacy_case.encode(SENTENCE)
    with torch.no_grad():
        hidden = encoder(**encoded).last_hidden_state
    expected = hidden[:, 0] @ state["classifier.weight"].T + state["classifier.bias"]
    answer = intgrads.attribute(legacy_bundle, SENTENCE, n_steps=2, method="riemann_left")
    torch.testing.assert_close(answer["logits"], expected, rtol=1e-5, atol=1e-5)
    # and not the pooler head of the same file read as a transformers model
    pooled = torch.tanh(hidden[:, 0] @ state["bert.pooler.dense.weight"].T + state["bert.pooler.dense.bias"])
    pooler_logits = pooled @ state["classifier.weight"].T + state["classifier.bias"]
    assert not torch.allclose(pooler_logits, expected, atol=1e-2)


@pytest.mark.parametrize("method,baseline", [("gausslegendre", "zero"), ("riemann_middle", "period"),
                                             ("riemann_trapezoid", "rand-norm")])
def test_legacy_ig_matches_captum(legacy_case, legacy_bundle, method, baseline):
    answer = intgrads.attribute(legacy_bundle, SENTENCE, n_steps=N_STEPS, method=method, baseline=baseline)
    oracle = legacy_case.captum(SENTENCE, n_steps=N_STEPS, method=method, baseline=baseline)
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(answer["logits"], oracle["logits"], rtol=1e-5, atol=1e-5)
    assert answer["convergence_delta"] == pytest.approx(oracle["delta"], abs=1e-4)


# ----------------------------------------------------------------------------- XLNet inputs


def test_xlnet_is_fed_segment_ids(xlnet_case, bundles):
    """The answer's logits are XLNet's with token_type_ids (0 ... 0 <sep>:0 <cls>:2), which differ
    from XLNet's without them (so the check has teeth)."""
    encoded = xlnet_case.encode(SENTENCE)
    assert encoded["token_type_ids"][0, -1] == 2 and (encoded["token_type_ids"][0, :-1] == 0).all()
    with torch.no_grad():
        with_types = xlnet_case.model(**encoded).logits
        without = xlnet_case.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    assert not torch.allclose(with_types, without, atol=1e-3)
    answer = intgrads.attribute(bundles["xlnet"], SENTENCE, n_steps=2, method="riemann_left")
    torch.testing.assert_close(answer["logits"], with_types, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- files


def test_determinism_across_fresh_loads(cases):
    for name in ("bert", "xlnet"):
        first = intgrads.attribute(cases[name].load(), SENTENCE, n_steps=N_STEPS, baseline="rand-unif")
        second = intgrads.attribute(cases[name].load(), SENTENCE, n_steps=N_STEPS, baseline="rand-unif")
        for key in ("integrated_gradients", "intermediate_gradients", "intermediates", "logits"):
            assert torch.equal(first[key], second[key]), (name, key)
        assert first["convergence_delta"] == second["convergence_delta"]


def test_module_prefixed_state_dict_loads(xlnet_case, xlnet_files, bundles, tmp_path, bert_files):
    prefixed = xlnet_files.extra["module_prefixed"]
    assert all(key.startswith("module.") for key in torch.load(prefixed, weights_only=True))
    bundle = intgrads.load_model("xlnet-base", str(prefixed), config=str(xlnet_files.config),
                                 tokenizer=str(xlnet_files.tokenizer))
    expected = intgrads.attribute(bundles["xlnet"], SENTENCE, n_steps=N_STEPS, baseline="pad")
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=N_STEPS, baseline="pad")
    assert torch.equal(answer["integrated_gradients"], expected["integrated_gradients"])
    torch.testing.assert_close(answer["logits"], expected["logits"], rtol=0, atol=0)

    # BERT too
    state = torch.load(bert_files.weights, weights_only=True)
    path = tmp_path / "bert-dp.pth"
    torch.save({f"module.{key}": value for key, value in state.items()}, path)
    bundle = intgrads.load_model("bert", str(path), config=str(bert_files.config), tokenizer=str(bert_files.tokenizer))
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=2, method="riemann_left")
    reference = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method="riemann_left")
    assert torch.equal(answer["integrated_gradients"], reference["integrated_gradients"])


def test_config_directory_is_accepted(xlnet_files):
    bundle = intgrads.load_model("xlnet-base", str(xlnet_files.weights), config=str(xlnet_files.config.parent),
                                 tokenizer=str(xlnet_files.tokenizer))
    assert bundle.model.config.d_model == 32


def test_pickled_whole_model_is_refused(xlnet_case, xlnet_files, tmp_path):
    path = tmp_path / "whole-model.pth"
    torch.save(xlnet_case.model, path)
    with pytest.raises(ValueError, match="state_dict"):
        intgrads.load_model("xlnet-base", str(path), config=str(xlnet_files.config),
                            tokenizer=str(xlnet_files.tokenizer))


def test_non_state_dict_object_is_refused(xlnet_files, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="state_dict"):
        intgrads.load_model("xlnet-base", str(path), config=str(xlnet_files.config),
                            tokenizer=str(xlnet_files.tokenizer))


def test_missing_and_unexpected_keys_are_named(bert_files, tmp_path):
    state = torch.load(bert_files.weights, weights_only=True)
    del state["classifier.bias"]
    state["bert.encoder.layer.0.surprise.weight"] = torch.zeros(3)
    path = tmp_path / "bad-keys.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        intgrads.load_model("bert", str(path), config=str(bert_files.config), tokenizer=str(bert_files.tokenizer))
    message = str(error.value)
    assert "classifier.bias" in message and "bert.encoder.layer.0.surprise.weight" in message
    assert "missing" in message.lower() and "unexpected" in message.lower()


def test_missing_key_alone_is_an_error(xlnet_files, tmp_path):
    state = torch.load(xlnet_files.weights, weights_only=True)
    del state["sequence_summary.summary.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"sequence_summary\.summary\.weight"):
        intgrads.load_model("xlnet-base", str(path), config=str(xlnet_files.config),
                            tokenizer=str(xlnet_files.tokenizer))


def test_wrong_family_config_is_an_error(xlnet_files, bert_files):
    """BERT weights with the built-in bert-base shape (768 hidden) do not fit: an error, not a silent load."""
    with pytest.raises(ValueError):
        intgrads.load_model("bert", str(bert_files.weights), tokenizer=str(bert_files.tokenizer))


def test_bad_family_and_device_are_value_errors(bert_files):
    with pytest.raises(ValueError, match="family"):
        intgrads.load_model("gpt", str(bert_files.weights), config=str(bert_files.config),
                            tokenizer=str(bert_files.tokenizer))
    with pytest.raises(ValueError, match="device"):
        intgrads.load_model("bert", str(bert_files.weights), config=str(bert_files.config),
                            tokenizer=str(bert_files.tokenizer), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="(?i)cuda"):
            intgrads.load_model("bert", str(bert_files.weights), config=str(bert_files.config),
                                tokenizer=str(bert_files.tokenizer), device="cuda")


def test_layer_can_be_named(hf_case, hf_files, bundles):
    bundle = intgrads.load_model("hf", str(hf_files.weights), layer="distilbert.embeddings")
    assert bundle.layer_name == "distilbert.embeddings"
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=3)
    default = intgrads.attribute(bundles["hf"], SENTENCE, n_steps=3)
    assert torch.equal(answer["integrated_gradients"], default["integrated_gradients"])
    with pytest.raises(ValueError, match="layer"):
        intgrads.load_model("hf", str(hf_files.weights), layer="distilbert.no_such_module")


def test_hf_tokenizer_defaults_to_the_weights_directory(hf_case, hf_files):
    bundle = intgrads.load_model("hf", str(hf_files.weights))
    assert bundle.tokenizer.unk_token_id not in bundle.tokenizer("the good movie")["input_ids"]
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=3, method="riemann_right", baseline="unk")
    oracle = hf_case.captum(SENTENCE, n_steps=3, method="riemann_right", baseline="unk")
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=1e-4, atol=1e-6)
