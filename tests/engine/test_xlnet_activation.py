"""XLNet's feed-forward activation as the old tool's models ran it: the tanh GELU ("gelu_new").

The oracle is captum's LayerIntegratedGradients on transformers' XLNet built with ``ff_activation="gelu_new"``.
The model is seeded, with its feed-forward input weights scaled so that the pre-activations are O(1), as in real
checkpoints. Where they are tiny, the tanh and erf GELUs agree to ~1e-8 and no test could tell them apart. The
same weights run with the exact GELU must then miss the oracle by more than the tolerance."""

from __future__ import annotations

import json

import pytest
import torch

import intgrads

from conftest import Case, Files

SENTENCE = "the movie was good but the ending felt rushed."
RTOL, ATOL = 1e-4, 1e-6
N_STEPS = 16


@pytest.fixture(scope="module")
def scaled_xlnet(tmp_path_factory, xlnet_tokenizer_dir, xlnet_tokenizer):
    """State dict, a config.json that names no activation, one that names the exact "gelu", and the oracle case."""
    from transformers import XLNetConfig, XLNetForSequenceClassification

    directory = tmp_path_factory.mktemp("xlnet-scaled")
    settings = dict(vocab_size=len(xlnet_tokenizer), d_model=32, n_layer=2, n_head=4, d_inner=64, untie_r=True,
                    attn_type="bi", initializer_range=0.2, summary_type="last", summary_use_proj=True,
                    summary_activation="tanh", pad_token_id=xlnet_tokenizer.pad_token_id, bos_token_id=1,
                    eos_token_id=2, num_labels=2)
    torch.manual_seed(3)
    oracle_model = XLNetForSequenceClassification(XLNetConfig(ff_activation="gelu_new", **settings)).eval()
    with torch.no_grad():
        for layer in oracle_model.transformer.layer:
            layer.ff.layer_1.weight.mul_(1.5)   # std 0.3: pre-activations O(1) after LayerNorm
    torch.save(oracle_model.state_dict(), directory / "xlnet.pth")
    unnamed = {key: value for key, value in XLNetConfig(**settings).to_dict().items() if key != "ff_activation"}
    (directory / "config.json").write_text(json.dumps(unnamed))
    (directory / "exact").mkdir()
    (directory / "exact" / "config.json").write_text(json.dumps({**unnamed, "ff_activation": "gelu"}))
    files = Files(directory / "xlnet.pth", directory / "config.json", xlnet_tokenizer_dir)
    case = Case("xlnet-scaled", "xlnet-base", files, xlnet_tokenizer, oracle_model, "transformer.word_embedding", True)
    return case, directory


def _pre_activation_scale(model, encoded) -> float:
    seen = []
    handle = model.transformer.layer[0].ff.layer_1.register_forward_hook(
        lambda module, args, output: seen.append(output.detach().abs().mean()))
    with torch.no_grad():
        model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
              token_type_ids=encoded["token_type_ids"])
    handle.remove()
    return float(seen[0])


def test_xlnet_runs_the_tanh_gelu_and_matches_the_oracle(scaled_xlnet):
    case, directory = scaled_xlnet
    encoded = case.encode(SENTENCE)
    assert _pre_activation_scale(case.model, encoded) > 0.8   # the regime where the two GELUs differ

    bundle = intgrads.load_model("xlnet-base", case.files.weights, config=case.files.config,
                                 tokenizer=str(case.files.tokenizer))
    assert bundle.activation == "gelu_new"
    answer = intgrads.attribute(bundle, SENTENCE, target=1, n_steps=N_STEPS)
    assert answer["activation"] == "gelu_new" and intgrads.summarize_answer(answer)["activation"] == "gelu_new"
    oracle = case.captum(SENTENCE, n_steps=N_STEPS, target=1)
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=RTOL, atol=ATOL)

    exact = intgrads.load_model("xlnet-base", case.files.weights, config=directory / "exact" / "config.json",
                                tokenizer=str(case.files.tokenizer))
    assert exact.activation == "gelu"   # a config that names an activation is honoured as written
    other = intgrads.attribute(exact, SENTENCE, target=1, n_steps=N_STEPS)
    gap = (other["integrated_gradients"] - oracle["ig"]).abs()
    bound = ATOL + RTOL * oracle["ig"].abs()
    assert bool((gap > bound).any()), "the exact GELU should miss the tanh-GELU oracle on this model"
    grad_gap = float((other["intermediate_gradients"] - answer["intermediate_gradients"]).abs().max())
    print(f"\nexact vs tanh GELU: max |IG gap| {float(gap.max()):.2e}, max |g_k gap| {grad_gap:.2e}")


def test_the_family_default_without_any_config_is_the_tanh_gelu():
    from intgrads.engine.families import family_config

    assert family_config("xlnet-base").ff_activation == "gelu_new"
    assert family_config("xlnet-large").ff_activation == "gelu_new"
    assert family_config("bert").hidden_act == "gelu"
