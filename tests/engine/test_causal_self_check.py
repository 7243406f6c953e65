"""The causal-LM load check: a model the engine would feed differently from how it runs itself is refused."""

from __future__ import annotations

import pytest

import intgrads
from intgrads.launcher.tiny_lm import tiny_lm, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def test_causal_lms_that_run_as_the_engine_feeds_them_load(tokenizer):
    for kind in ("llama", "gpt2"):
        bundle = intgrads.load_model(model=tiny_lm(kind, tokenizer), tokenizer=tokenizer)
        assert bundle.kind == "causal_lm"


def test_a_model_whose_inputs_embeds_path_differs_is_refused(tokenizer):
    """The engine feeds the path's points as ``inputs_embeds``: a model that treats them otherwise than its own
    embedding of the ids (here: scaled by 1.5) would be attributed wrongly."""
    model = tiny_lm("llama", tokenizer)

    def scale_given_embeddings(module, args, kwargs):
        if kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"] * 1.5
        return args, kwargs

    model.model.register_forward_pre_hook(scale_given_embeddings, with_kwargs=True)
    with pytest.raises(ValueError, match=r"llama model \(LlamaForCausalLM\): fed its own token embeddings as "
                                         r"inputs_embeds it does not reproduce its logits"):
        intgrads.load_model(model=model, tokenizer=tokenizer)


def test_a_model_that_embeds_twice_is_refused(tokenizer):
    model = tiny_lm("llama", tokenizer)

    def embed_again(module, args, kwargs):
        if kwargs.get("input_ids") is not None:
            module.embed_tokens(kwargs["input_ids"])
        return args, kwargs

    model.model.register_forward_pre_hook(embed_again, with_kwargs=True)
    with pytest.raises(ValueError, match=r"its token embedding runs 2 times per forward pass"):
        intgrads.load_model(model=model, tokenizer=tokenizer)
