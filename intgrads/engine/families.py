"""Model families: how each is configured, built and fed, and which layer is attributed.

- ``bert``: a ``BertForSequenceClassification`` state dict, bert-base-uncased shape by default.
  The old tool's BERT files use the legacy (pre-transformers) layout, recognised by LayerNorm
  parameters named ``gamma``/``beta``; their classifier (dropout -> Linear) reads the [CLS] vector of
  the last encoder layer, not the pooler (whose weights are in those files but unused).
- ``xlnet-base`` / ``xlnet-large``: ``XLNetForSequenceClassification`` state dicts,
  xlnet-base-cased / xlnet-large-cased shapes.
- ``hf``: any ``save_pretrained`` directory of an ``AutoModelForSequenceClassification``.

Attributed layer: the embeddings module's output for BERT-like models (word + position +
token type, after LayerNorm), the word-embedding output for XLNet (sequence-first inside the
model, reported batch-first). For "hf" models, in this order: the module of ``EMBEDDING_SUM_LAYERS`` for
model types that embed token types with the word table (word + position + token type, once per forward);
``<base>.embeddings`` where the model has such a module; else the word-embedding call on the input ids
(decoder-only models; an encoder-decoder's encoder ``embed_tokens``). docs/models.md lists them per type.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel, XLNetConfig
from transformers.modeling_outputs import SequenceClassifierOutput

FAMILIES = ("bert", "xlnet-base", "xlnet-large", "hf")

# XLNet's feed-forward activation as the old tool's models ran it. The XLNet code of the transformers 2.x/3.0
# era computed "gelu" as the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and the
# original checkpoints were trained with it. transformers 5 calls that "gelu_new" and maps "gelu" to the exact
# erf GELU, which differs by up to ~5e-4 where pre-activations are O(1). So -xlb/-xll models run "gelu_new"
# unless their --config names an activation ("ff_activation": "gelu" asks for the exact GELU).
XLNET_ACTIVATION = "gelu_new"

# Shapes of the public checkpoints, so that no network is needed to build the models.
FAMILY_CONFIGS = {
    "bert": (BertConfig, dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512,
                              type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, num_labels=2)),
    "xlnet-base": (XLNetConfig, dict(vocab_size=32000, d_model=768, n_layer=12, n_head=12, d_inner=3072,
                                     ff_activation=XLNET_ACTIVATION, untie_r=True, attn_type="bi", layer_norm_eps=1e-12,
                                     bi_data=False, clamp_len=-1, same_length=False, summary_type="last",
                                     summary_use_proj=True, summary_activation="tanh",
                                     pad_token_id=5, bos_token_id=1, eos_token_id=2, num_labels=2)),
    "xlnet-large": (XLNetConfig, dict(vocab_size=32000, d_model=1024, n_layer=24, n_head=16, d_inner=4096,
                                      ff_activation=XLNET_ACTIVATION, untie_r=True, attn_type="bi", layer_norm_eps=1e-12,
                                      bi_data=False, clamp_len=-1, same_length=False, summary_type="last",
                                      summary_use_proj=True, summary_activation="tanh",
                                      pad_token_id=5, bos_token_id=1, eos_token_id=2, num_labels=2)),
}
DEFAULT_TOKENIZERS = {"bert": "bert-base-uncased", "xlnet-base": "xlnet-base-cased",
                      "xlnet-large": "xlnet-large-cased"}

# Model types whose forward embeds token_type_ids with the word table itself (a second call of the same module):
# the word table runs twice, so the attributed layer is the first module after the sum word + position +
# token type, which runs once per forward.
EMBEDDING_SUM_LAYERS = {
    "gpt2": "transformer.drop", "gpt_neo": "transformer.drop", "openai-gpt": "transformer.drop",
    "gpt_bigcode": "transformer.drop", "ctrl": "transformer.dropout",
    "xlm": "transformer.layer_norm_emb", "flaubert": "transformer.layer_norm_emb",
}

LEGACY_NORM_SUFFIXES = (".gamma", ".beta")
# Buffers some older checkpoints saved; they are recomputed identically by the model.
IGNORED_BUFFER_SUFFIXES = ("embeddings.position_ids",)
LEGACY_UNUSED_PREFIX = "bert.pooler."


def family_config(family: str, config=None):
    """The model config: the family's constants, or ``config`` (a config.json or a directory)."""
    config_class, constants = FAMILY_CONFIGS[family]
    if config is None:
        return config_class(**constants)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {config} (give a config.json or a directory holding one)")
    loaded = config_class.from_json_file(str(path))
    if config_class is XLNetConfig and "ff_activation" not in json.loads(path.read_text(encoding="utf-8")):
        loaded.ff_activation = XLNET_ACTIVATION   # a config that names none: the old tool's activation
    return loaded


def activation_of(model) -> str | None:
    """The name of the model's feed-forward activation as its config gives it (None when it has none)."""
    config = model.config
    for name in ("ff_activation", "hidden_act", "activation", "hidden_activation"):
        value = getattr(config, name, None)
        if isinstance(value, str):
            return value
    return None


def is_legacy_bert(state: dict) -> bool:
    """The pre-transformers BERT layout names LayerNorm parameters gamma/beta."""
    return any(key.endswith(LEGACY_NORM_SUFFIXES) for key in state)


def legacy_to_transformers_names(state: dict) -> dict:
    """Rename legacy ``gamma``/``beta`` to ``weight``/``bias``, drop the unused pooler."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(LEGACY_UNUSED_PREFIX):
            continue
        if key.endswith(".gamma"):
            key = key[: -len(".gamma")] + ".weight"
        elif key.endswith(".beta"):
            key = key[: -len(".beta")] + ".bias"
        renamed[key] = value
    return renamed


def drop_ignored_buffers(state: dict) -> dict:
    return {key: value for key, value in state.items() if not key.endswith(IGNORED_BUFFER_SUFFIXES)}


class LegacyBertForSequenceClassification(nn.Module):
    """The old tool's BERT classifier: logits = Linear(dropout(h_L[:, 0])), where h_L is the last
    encoder layer's output and position 0 is [CLS]. No pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.base_model_prefix = "bert"

    def get_input_embeddings(self):
        return self.bert.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           inputs_embeds=inputs_embeds).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(hidden[:, 0])))


def default_layer_name(model: nn.Module, words: nn.Module | None = None) -> str:
    """The attributed layer: the model type's ``EMBEDDING_SUM_LAYERS`` entry, else ``<base>.embeddings`` when
    the model has such a module (not a bare embedding table), else ``words``, the module that embeds the input
    ids (default: ``get_input_embeddings()``; XLNet: ``transformer.word_embedding``)."""
    summed = EMBEDDING_SUM_LAYERS.get(getattr(model.config, "model_type", ""))
    if summed is not None:
        return summed
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    embeddings = getattr(base, "embeddings", None) if base is not None else None
    if isinstance(embeddings, nn.Module) and not isinstance(embeddings, nn.Embedding):
        return f"{prefix}.embeddings"
    return module_name(model, words if words is not None else model.get_input_embeddings())


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError("module is not part of the model")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layer {name!r} is not a module of this model; e.g. {default_layer_name(model)!r}") from None


def is_sequence_first(model: nn.Module) -> bool:
    """XLNet runs sequence-first (seq, batch, hidden) inside its transformer."""
    return getattr(model.config, "model_type", "") == "xlnet"


# Model types AutoModelForSequenceClassification maps that the engine refuses at load, and why (docs/models.md).
_DOCUMENT = "a document model: it needs "
_UNVERIFIED = "not verified against captum yet: "
_VISION = _UNVERIFIED + "a vision-language model (its classifier wraps a vision tower), not tried on text alone"
REFUSED_TYPES: dict[str, str] = {
    "canine": "character-level: it hashes code points through several tables; there is no word-embedding table "
              "whose vectors a baseline could replace",
    "ibert": "its quantisation-aware embeddings return (value, scale) pairs, not word vectors",
    "layoutlmv2": _DOCUMENT + "page images and the detectron2 visual backbone",
    "layoutlmv3": _DOCUMENT + "bounding boxes and page images",
    "lilt": _DOCUMENT + "a bounding box for every token",
    "tapas": "a table model: it needs its table tokenizer's seven token-type ids per token",
    "perceiver": "its input embeddings are a latent array, not a token table (text enters through a byte "
                 "preprocessor)",
    "yoso": "its attention's backward pass is an approximation (a custom autograd function), so its gradients do "
            "not integrate to the change of the logit",
    "reformer": _UNVERIFIED + "reversible layers recompute activations in the backward pass, and axial position "
                              "embeddings fix the input's shape",
    "deepseek_v3": _UNVERIFIED + "no small offline configuration of its latent attention was found",
    "axk1": _UNVERIFIED + "no small offline configuration of its latent attention was found",
    "axk2": _UNVERIFIED + "no small offline configuration of its latent attention was found",
    "cohere_compass_text": _UNVERIFIED + "no small offline configuration was found",
    "zamba": _UNVERIFIED + "no small offline configuration of its hybrid Mamba layout was found",
    "zamba2": _UNVERIFIED + "no small offline configuration of its hybrid Mamba layout was found",
    "t5gemma": _UNVERIFIED + "no small offline configuration of its separate encoder and decoder was found",
    "gemma3": _VISION, "modernvbert": _VISION, "qwen3_5": _VISION, "t5gemma2": _VISION, "ultravbert": _VISION,
}

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def check_supported_type(config, source: str) -> None:
    """Refuse a model type of ``REFUSED_TYPES`` before anything is built."""
    model_type = getattr(config, "model_type", "")
    if model_type in REFUSED_TYPES:
        raise ValueError(f"{source}: model type {model_type!r} is refused: {REFUSED_TYPES[model_type]}")


def check_head_loaded(model, missing, config, source: str) -> None:
    """Refuse a checkpoint whose files lack weights of the classifier (transformers would initialise them at
    random and only log it): a causal language model's folder, a base model's, a head of another shape."""
    missing = sorted(missing)
    if not missing:
        return
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", type(model).__name__)
    named = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    if any(name.endswith(CAUSAL_LM_SUFFIXES) for name in architectures):
        raise ValueError(f"{source} is a causal language model checkpoint ({model_type}, {architectures[0]}) without "
                         f"a classification head: its files lack {named}, which would be random numbers. Load it as "
                         "a causal language model, or give the directory of a fine-tuned sequence classifier")
    saved = f" ({architectures[0]})" if architectures else ""
    raise ValueError(f"{source} is a {model_type} checkpoint{saved} without a complete classification head: its files "
                     f"lack {named}, which would be random numbers. Give the save_pretrained directory of a "
                     "fine-tuned sequence classifier")
