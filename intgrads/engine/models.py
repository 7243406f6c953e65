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

from . import families
from .causal_models import is_causal_lm_dir, load_causal_lm
from .weights import check_keys, read_state_dict

PROBE_WORDS = ("the", "good", "movie")


@dataclass
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
    # attribute() substitutes the layer's output inside the model while it runs: one call at a time
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value and value > 0 else None


def load_model(family: str, weights, *, config=None, tokenizer=None, device="cpu", layer: str | None = None) -> ModelBundle:
    """Load a sequence classifier (or, for "hf", a causal LM: :mod:`.causal_models`) for attribution.

    ``family``: "bert" | "xlnet-base" | "xlnet-large" (``weights`` is a state-dict ``.pth``) or "hf"
    (``weights`` is a ``save_pretrained`` directory). ``config`` (config.json or directory) overrides
    the family's built-in shape; ``tokenizer`` is a directory (read offline) or a hub name;
    ``layer`` is a dotted module path overriding the family's attributed layer.
    """
    if family not in families.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(families.FAMILIES)}; got {family!r}")
    device = _check_device(device)
    if family == "hf" and layer is None and is_causal_lm_dir(weights):   # a causal LM: its own bundle and engine
        return load_causal_lm(weights, config=config, tokenizer=tokenizer, device=device)
    if family == "hf":
        model, layout = _load_hf(weights, config), "hf"
        tokenizer_source = tokenizer or weights
    else:
        model, layout = _load_state_dict_model(family, weights, config)
        tokenizer_source = tokenizer or families.DEFAULT_TOKENIZERS[family]
    model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    loaded_tokenizer = load_tokenizer(family, tokenizer_source, model)
    layer_name = layer or families.default_layer_name(model)
    config_labels = getattr(model.config, "id2label", None) or {}
    return ModelBundle(
        model=model, tokenizer=loaded_tokenizer, family=family, layout=layout, layer_name=layer_name,
        layer=families.resolve_layer(model, layer_name), word_embedding=model.get_input_embeddings(),
        sequence_first=families.is_sequence_first(model), device=device,
        accepts_token_types="token_type_ids" in inspect.signature(model.forward).parameters,
        source=str(weights),
        label_names=[str(config_labels.get(i, i)) for i in range(int(model.config.num_labels))],
        activation=families.activation_of(model),
    )


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
    kwargs = {"local_files_only": True}
    if config is not None:
        kwargs["config"] = AutoConfig.from_pretrained(str(config), local_files_only=True)
    return AutoModelForSequenceClassification.from_pretrained(str(directory), **kwargs)


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
