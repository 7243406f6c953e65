"""Every model type AutoModelForSequenceClassification maps (in the installed transformers) either answers equal
to captum or is refused at load with the documented message (docs/models.md).

Each type: a tiny seeded config (2 layers, hidden 64, 4 heads, the MiniLM WordPiece vocabulary, weights drawn
with std 0.2 so layers are far from zero), ``save_pretrained`` into a folder, ``intgrads.load_model("hf", DIR)``.
The oracle never goes through the engine: the folder loaded with plain transformers, the tokenizer's output fed
as is, a forward hook that puts the path's word vectors in place of the first call of the words module (the
input-embedding table, or an encoder-decoder's encoder ``embed_tokens``), and captum 0.9
``LayerIntegratedGradients`` on the documented layer (5 Gauss-Legendre steps, zero baseline, target 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

import intgrads
from intgrads.engine.families import EMBEDDING_SUM_LAYERS, REFUSED_TYPES

SENTENCE = "the movie was good but the ending felt rushed."
N_STEPS, TARGET = 5, 1
TYPES = sorted(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
MUST_ANSWER = ("gpt2", "gpt_neo", "openai-gpt", "xlm", "t5", "bart", "mbart", "mt5", "longformer")
KEPT_IDS = 2000
H = 64
COMMON = dict(
    hidden_size=H, d_model=H, n_embd=H, dim=H, embed_dim=H, n_embed=H, emb_dim=H, embedding_size=H,
    num_hidden_layers=2, n_layer=2, num_layers=2, n_layers=2, encoder_layers=2, decoder_layers=2,
    num_decoder_layers=2, num_attention_heads=4, n_head=4, n_heads=4, encoder_attention_heads=4,
    decoder_attention_heads=4, num_heads=4, num_key_value_heads=4, d_kv=16, intermediate_size=128, ffn_dim=128,
    d_ff=128, n_inner=128, hidden_dim=128, encoder_ffn_dim=128, decoder_ffn_dim=128, d_inner=128,
    max_position_embeddings=512, n_positions=512, n_ctx=512, pad_token_id=0, bos_token_id=101, eos_token_id=102,
    sep_token_id=102, cls_token_id=101, decoder_start_token_id=101, id2label={0: "negative", 1: "positive"},
    initializer_range=0.2,
    init_std=0.2, num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=32, attention_window=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    kv_lora_rank=16, q_lora_rank=16, rotary_dim=8, head_dim=16)
OVERRIDES = {   # what a type needs beyond COMMON (None: drop the key)
    "falcon": dict(head_dim=None),
    "luke": dict(entity_vocab_size=8, entity_emb_size=H),
    "rembert": dict(input_embedding_size=H, output_embedding_size=H),
    "funnel": dict(num_hidden_layers=None, block_sizes=[1, 1], d_head=16),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "jamba": dict(attn_layer_period=1, attn_layer_offset=0),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"]),
    "xlnet": dict(max_position_embeddings=None),
    "squeezebert": dict(embedding_size=H),
    "mobilebert": dict(initializer_range=0.05),
    "xmod": dict(languages=["en_XX"], default_language="en_XX"),
}


# XLM and FlauBERT multiply the attributed layer's output by the mask in place
CHANGED_IN_PLACE = ("xlm", "flaubert")


class _Copy(nn.Module):
    def forward(self, value):
        return value.clone()


def _config(model_type, vocab_size):
    kwargs = {**COMMON, **OVERRIDES.get(model_type, {}), "vocab_size": vocab_size}
    return CONFIG_MAPPING[model_type](**{key: value for key, value in kwargs.items() if value is not None})


@pytest.fixture(scope="module")
def tokenizer_dir(minilm_dir, tmp_path_factory):
    """The MiniLM WordPiece tokenizer cut to its first KEPT_IDS ids (specials, characters, frequent words) plus
    the words of the sentences: same ids, a small vocabulary, so a tiny model's embedding table is small."""
    from transformers import BertTokenizerFast

    directory = tmp_path_factory.mktemp("minilm-small-tokenizer")
    lines = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    kept = lines[:KEPT_IDS] + sorted({word for word in SENTENCE.replace(".", " ").split() + ["movie"]}
                                     - set(lines[:KEPT_IDS]))
    (directory / "vocab.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(SENTENCE)["input_ids"])
    assert tokens[:3] == ["[CLS]", "the", "movie"] and "[UNK]" not in tokens and tokens[-1] == "[SEP]"
    return tokenizer


def _words_module(model):
    """The module that embeds the input ids: an encoder-decoder's encoder table, else the input embeddings."""
    for name, module in model.named_modules():
        if name.endswith("encoder.embed_tokens"):
            return module
    return model.get_input_embeddings()


def _documented_layer(model):
    """docs/models.md: the embedding-sum module of the GPT-2-like and XLM-like types, else <base>.embeddings,
    else the module that embeds the input ids."""
    model_type = model.config.model_type
    if model_type in EMBEDDING_SUM_LAYERS:
        return EMBEDDING_SUM_LAYERS[model_type]
    prefix = model.base_model_prefix
    embeddings = getattr(getattr(model, prefix, None), "embeddings", None)
    if isinstance(embeddings, nn.Module) and not isinstance(embeddings, nn.Embedding):
        return f"{prefix}.embeddings"
    words = _words_module(model)
    return next(name for name, module in model.named_modules() if module is words)


def _captum(directory, tokenizer, layer_name, **loading):
    """captum LayerIntegratedGradients on ``layer_name`` of the folder read with plain transformers."""
    from captum.attr import LayerIntegratedGradients

    model = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True,
                                                               **loading).eval()
    accepted = set(__import__("inspect").signature(model.forward).parameters)
    encoded = tokenizer([SENTENCE], return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded and name in accepted]
    words_module = _words_module(model)
    with torch.no_grad():
        own = model(**{name: encoded[name] for name in names}).logits
    length = encoded["input_ids"].shape[1]
    given = {}

    def put_words(module, args, output):
        given["calls"] += 1
        if given["calls"] > 1:
            return output
        words = given["words"]
        if sequence_first:   # XLNet embeds (seq, batch): captum's layer is an identity on the batch-first words
            return identity(words).transpose(0, 1)
        return torch.cat([words, output[:, words.shape[1]:]], dim=1) if output.shape[1] > words.shape[1] else words

    def forward(words, *tensors):
        given.update(words=words, calls=0)
        return model(**dict(zip(names, tensors))).logits

    with torch.no_grad():
        x_words = words_module(encoded["input_ids"])
    words_module.register_forward_hook(put_words)
    sequence_first, identity = model.config.model_type == "xlnet", _Copy()
    layer = identity if sequence_first else model.get_submodule(layer_name)
    if model.config.model_type in CHANGED_IN_PLACE:   # captum's leaf must not be changed in place: copy after it
        parent, _, last = layer_name.rpartition(".")
        setattr(model.get_submodule(parent), last, nn.Sequential(layer, _Copy()))
    lig = LayerIntegratedGradients(forward, layer)
    ig = lig.attribute(x_words, baselines=torch.zeros_like(x_words), target=TARGET, n_steps=N_STEPS,
                       additional_forward_args=tuple(encoded[name] for name in names), method="gausslegendre")
    if ig.shape[1] > length:   # the model padded inside forward: nothing moves there
        assert ig[:, length:].abs().max() == 0
        ig = ig[:, :length]
    return ig.detach(), own


@pytest.mark.parametrize("model_type", TYPES)
def test_model_type_answers_as_captum_or_is_refused(model_type, tokenizer, tokenizer_dir, tmp_path):
    if model_type in REFUSED_TYPES:
        CONFIG_MAPPING[model_type]().save_pretrained(str(tmp_path))
        with pytest.raises(ValueError, match=f"model type '{model_type}' is refused: "):
            intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir))
        assert model_type not in MUST_ANSWER
        return
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_config(model_type, len(tokenizer))).eval()
    model.save_pretrained(str(tmp_path))
    bundle = intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir))
    assert bundle.layer_name == _documented_layer(model)
    answer = intgrads.attribute(bundle, SENTENCE, target=TARGET, n_steps=N_STEPS, baseline="zero")
    expected, own = _captum(tmp_path, tokenizer, bundle.layer_name)
    torch.testing.assert_close(answer["logits"], own, rtol=0, atol=1e-5 * (1 + float(own.abs().max())))
    scale = float(expected.abs().max())
    assert scale > 1e-3, "the comparison must not be vacuous"
    assert answer["integrated_gradients"].shape == expected.shape
    assert float((answer["integrated_gradients"] - expected).abs().max()) <= 1e-4 * scale


# ----------------------------------------------------------------------------- refusals the self-check makes


def _tiny(model_type, tokenizer, seed=0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(_config(model_type, len(tokenizer))).eval()


def test_causal_language_model_checkpoint_is_a_causal_lm_never_a_classifier(tokenizer, tokenizer_dir, tmp_path):
    """A causal LM's folder would load as a classifier with a random ``score`` head: it loads as a causal LM, and
    asked for as a classifier (a layer of its own named) it is refused, saying what it is."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config("llama", len(tokenizer))).save_pretrained(str(tmp_path))
    assert intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir)).kind == "causal_lm"
    with pytest.raises(ValueError, match=r"is a causal language model checkpoint \(llama, LlamaForCausalLM\) "
                                         r"without a classification head: its files lack score\.weight"):
        intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir), layer="model.embed_tokens")


def test_base_model_checkpoint_is_refused(tokenizer, tokenizer_dir, tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(_config("bert", len(tokenizer))).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"is a bert checkpoint \(BertModel\) without a complete classification "
                                         r"head: its files lack classifier\.bias, classifier\.weight"):
        intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir))


def test_a_layer_that_runs_twice_is_refused(tokenizer, tokenizer_dir):
    """GPT-2 embeds the token types with its word table: that table runs twice per forward, so it cannot be the
    attributed layer (the engine's former choice, with wrong numbers)."""
    model = _tiny("gpt2", tokenizer)
    with pytest.raises(ValueError, match=r"gpt2 model: its attributed layer transformer\.wte runs 2 times per "
                                         r"forward \(it must run exactly once\)"):
        intgrads.load_model(model=model, tokenizer=tokenizer, layer="transformer.wte")


def test_a_layer_beside_the_words_is_refused(tokenizer):
    """A layer the word vectors do not reach (BERT's token-type table) has the same value at the input and the
    baseline: substituting it cannot reproduce the logits at the baseline, and the self-check says so."""
    model = _tiny("bert", tokenizer)
    with pytest.raises(ValueError, match=r"bert model: substituting the attributed layer "
                                         r"bert\.embeddings\.token_type_embeddings does not reproduce the logits"):
        intgrads.load_model(model=model, tokenizer=tokenizer, layer="bert.embeddings.token_type_embeddings")


# ----------------------------------------------------------------------------- a model already in memory


def test_a_model_in_memory_answers_as_captum(tokenizer, tmp_path):
    """load_model(model=..., tokenizer=...): family "hf" implied, the same self-check, the same numbers."""
    model = _tiny("bart", tokenizer)
    model.save_pretrained(str(tmp_path))
    bundle = intgrads.load_model(model=model, tokenizer=tokenizer)
    assert (bundle.family, bundle.layout, bundle.layer_name) == ("hf", "hf", "model.encoder.embed_tokens")
    assert bundle.model is model and not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    answer = intgrads.attribute(bundle, SENTENCE, target=TARGET, n_steps=N_STEPS)
    expected, own = _captum(tmp_path, tokenizer, bundle.layer_name)
    torch.testing.assert_close(answer["logits"], own, rtol=0, atol=1e-5 * (1 + float(own.abs().max())))
    assert float((answer["integrated_gradients"] - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_a_model_in_memory_needs_its_tokenizer_and_no_files(tokenizer):
    model = _tiny("bert", tokenizer)
    with pytest.raises(ValueError, match="needs tokenizer="):
        intgrads.load_model(model=model)
    with pytest.raises(ValueError, match="no family other than 'hf', no weights and no config"):
        intgrads.load_model("bert", "weights.pth", model=model, tokenizer=tokenizer)
    refused = AutoModelForSequenceClassification.from_config(CONFIG_MAPPING["yoso"](
        **{key: COMMON[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size")}, vocab_size=len(tokenizer)))
    with pytest.raises(ValueError, match="model type 'yoso' is refused: its attention's backward pass"):
        intgrads.load_model(model=refused, tokenizer=tokenizer)


def test_a_model_without_attention_mask_gets_no_padding(tokenizer):
    """FNet's forward takes no attention mask: sentences of different lengths run apart, each as it runs alone."""
    bundle = intgrads.load_model(model=_tiny("fnet", tokenizer), tokenizer=tokenizer)
    assert "attention_mask" not in bundle.input_names
    sentences = [SENTENCE, "a good movie"]
    together = intgrads.attribute(bundle, sentences, n_steps=N_STEPS)
    for sentence, answer in zip(sentences, together):
        alone = intgrads.attribute(bundle, sentence, n_steps=N_STEPS)
        assert torch.equal(answer["integrated_gradients"], alone["integrated_gradients"])


def test_a_bfloat16_checkpoint_loads_in_float32(tokenizer, tokenizer_dir, tmp_path):
    """transformers 5 loads a checkpoint in its saved dtype; the engine loads it in float32 (its substituted layer
    values are float32), and a bfloat16 model in memory is refused with what to do."""
    model = _tiny("llama", tokenizer).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    bundle = intgrads.load_model("hf", str(tmp_path), tokenizer=str(tokenizer_dir))
    assert bundle.model.dtype == torch.float32
    answer = intgrads.attribute(bundle, SENTENCE, target=TARGET, n_steps=N_STEPS)
    expected, _ = _captum(tmp_path, tokenizer, bundle.layer_name, dtype=torch.float32)
    assert float((answer["integrated_gradients"] - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    with pytest.raises(ValueError, match=r"holds torch\.bfloat16 weights: give it in float32 \(model\.float\(\)\)"):
        intgrads.load_model(model=model, tokenizer=tokenizer)
