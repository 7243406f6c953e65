"""Loading a model, its tokenizer and its attributed layer into a :class:`ModelBundle`."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification,
                          BertTokenizer, XLNetForSequenceClassification, XLNetTokenizer)

from . import families, probe
from .causal_models import causal_lm_bundle, is_causal_lm_dir, is_causal_lm_model, load_causal_lm
from .weights import check_keys, read_state_dict

PROBE_WORDS = ("the", "good", "movie")


@dataclass(repr=False)
class ModelBundle:
    """A model ready for attribution: eval mode, no parameter gradients, on ``device``."""

    model: nn.Module
    tokenizer: object
    family: str
    layout: str            # "transformers", "legacy" (old BERT files) or "hf"
    layer_name: str
    layer: nn.Module
    word_embedding: nn.Module
    sequence_first: bool   # the layer's output is (seq, batch, hidden) inside the model
    device: torch.device
    accepts_token_types: bool
    source: str = ""
    label_names: list = field(default_factory=list)
    activation: str | None = None   # the feed-forward activation that runs (config name, e.g. "gelu_new")
    input_names: tuple = ("input_ids", "attention_mask")   # the tokenizer's outputs the model is fed
    word_call: int = 0     # which call of word_embedding in one forward embeds the input ids
    # attribute() substitutes the layer's output inside the model while it runs: one call at a time
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        """One line (the dataclass's repr would print the whole network)."""
        labels = ", ".join(self.label_names) if self.label_names else str(self.num_labels)
        return (f"ModelBundle({self.family}/{self.layout}, layer {self.layer_name!r}, labels [{labels}], "
                f"device {self.device}, source {self.source!r})")

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value and value > 0 else None


def load_model(family: str | None = None, weights=None, *, config=None, tokenizer=None, device="cpu",
               layer: str | None = None, model: nn.Module | None = None) -> ModelBundle:
    """Load a sequence classifier for attribution, and check that the engine reproduces it (:mod:`.probe`); or, for
    "hf", a causal LM (:mod:`.causal_models`).

    ``family``: "bert" | "xlnet-base" | "xlnet-large" (``weights`` is a state-dict ``.pth``) or "hf"
    (``weights`` is a ``save_pretrained`` directory). ``config`` (config.json or directory) overrides
    the family's built-in shape; ``tokenizer`` is a directory (read offline), a hub name or a tokenizer object;
    ``layer`` is a dotted module path overriding the attributed layer. ``model``: a sequence classifier already
    in memory (family "hf" implied, no ``weights``; ``tokenizer`` required; float32 weights); it is put in eval
    mode, its parameters stop requiring gradients, and it moves to ``device``. An "hf" folder loads in float32
    whatever dtype its weights were saved in.
    A model the engine cannot attribute correctly raises ``ValueError`` naming its type and what did not hold.
    """
    device = _check_device(device)
    if model is not None:
        _check_in_memory(model, family, weights, config, tokenizer)
        if is_causal_lm_model(model):   # a causal LM: its own bundle and engine
            return causal_lm_bundle(model, tokenizer, device, f"{type(model).__name__} (in memory)")
        family, layout, tokenizer_source, source = "hf", "hf", tokenizer, f"{type(model).__name__} (in memory)"
    elif family not in families.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(families.FAMILIES)}; got {family!r}")
    elif family == "hf" and layer is None and is_causal_lm_dir(weights):   # a causal LM: its own bundle and engine
        return load_causal_lm(weights, config=config, tokenizer=tokenizer, device=device)
    elif family == "hf":
        model, layout = _load_hf(weights, config), "hf"
        tokenizer_source, source = tokenizer or weights, str(weights)
    else:
        model, layout = _load_state_dict_model(family, weights, config)
        tokenizer_source, source = tokenizer or families.DEFAULT_TOKENIZERS[family], str(weights)
    model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if isinstance(tokenizer_source, (str, Path)):
        loaded_tokenizer = load_tokenizer(family, tokenizer_source, model)
    else:
        loaded_tokenizer = tokenizer_source
        _check_tokenizer(loaded_tokenizer, type(loaded_tokenizer).__name__, model)
    input_names = _input_names(family, model, loaded_tokenizer)
    words, word_call = probe.find_words_call(model, loaded_tokenizer, input_names)
    layer_name = layer or families.default_layer_name(model, words)
    config_labels = getattr(model.config, "id2label", None) or {}
    bundle = ModelBundle(
        model=model, tokenizer=loaded_tokenizer, family=family, layout=layout, layer_name=layer_name,
        layer=families.resolve_layer(model, layer_name), word_embedding=words,
        sequence_first=families.is_sequence_first(model), device=device,
        accepts_token_types="token_type_ids" in input_names, source=source,
        label_names=[str(config_labels.get(i, i)) for i in range(int(model.config.num_labels))],
        activation=families.activation_of(model), input_names=input_names, word_call=word_call,
    )
    probe.self_check(bundle)
    return bundle


def _check_in_memory(model, family, weights, config, tokenizer) -> None:
    """What ``load_model(model=...)`` needs: no files, a tokenizer, a model type it attributes, float32 weights."""
    if family not in (None, "hf") or weights is not None or config is not None:
        raise ValueError("load_model(model=...) takes a model already in memory: give no family other than "
                         "'hf', no weights and no config")
    if tokenizer is None:
        raise ValueError("load_model(model=...) needs tokenizer= (the model's tokenizer object or directory)")
    families.check_supported_type(getattr(model, "config", None), f"the {type(model).__name__} given")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"the {type(model).__name__} given holds {dtype} weights: give it in float32 "
                         "(model.float()); precision='bfloat16' or 'float16' runs its passes in those under autocast")


def _input_names(family: str, model: nn.Module, tokenizer) -> tuple:
    """What the model is fed: for "hf", what its tokenizer returns (``model_input_names``) and its forward
    takes; for the state-dict families, ids, mask and token types as the old tool fed them."""
    parameters = inspect.signature(model.forward).parameters
    if family == "hf":
        names = ["input_ids"] + [name for name in getattr(tokenizer, "model_input_names", ())
                                 if name in ("attention_mask", "token_type_ids")]
    else:
        names = ["input_ids", "attention_mask", "token_type_ids"]
    return tuple(name for name in names if name == "input_ids" or name in parameters)


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]'; got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]'; got {device!r}")
    return device


def _load_state_dict_model(family: str, weights, config):
    state = families.drop_ignored_buffers(read_state_dict(weights))
    model_config = families.family_config(family, config)
    if family == "bert":
        if families.is_legacy_bert(state):
            model, layout = families.LegacyBertForSequenceClassification(model_config), "legacy"
            state = families.legacy_to_transformers_names(state)
        else:
            model, layout = BertForSequenceClassification(model_config), "transformers"
    else:
        model, layout = XLNetForSequenceClassification(model_config), "transformers"
    check_keys(state, model, weights)
    model.load_state_dict(state, strict=True)
    return model, layout


def _load_hf(directory, config):
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a save_pretrained directory (no config.json)")
    loaded_config = AutoConfig.from_pretrained(str(config if config is not None else directory),
                                               local_files_only=True)
    families.check_supported_type(loaded_config, str(directory))
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(directory), config=loaded_config, local_files_only=True, output_loading_info=True, dtype=torch.float32)
    families.check_head_loaded(model, info.get("missing_keys", ()), loaded_config, str(directory))
    return model


def load_tokenizer(family: str, source, model: nn.Module | None = None):
    """Load a tokenizer from a directory (offline) or a hub name, and check that it knows real words."""
    path = Path(str(source))
    local = path.is_dir()
    kwargs = {"local_files_only": True} if local else {}
    if local and not any((path / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
        tokenizer_class = XLNetTokenizer if family.startswith("xlnet") else BertTokenizer
        tokenizer = tokenizer_class.from_pretrained(str(path), **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    _check_tokenizer(tokenizer, source, model)
    return tokenizer


def _check_tokenizer(tokenizer, source, model):
    unk = tokenizer.unk_token_id
    ids = tokenizer(" ".join(PROBE_WORDS), add_special_tokens=False)["input_ids"]
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise ValueError(f"tokenizer from {source} maps ordinary words ({', '.join(PROBE_WORDS)}) to the unknown "
                         "token: it is not the model's vocabulary (check --tokenizer)")
    if model is not None:
        vocab = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer from {source} has {len(tokenizer)} tokens but the model's embedding has "
                             f"{vocab} rows: they do not belong together (check --tokenizer and --config)")
