"""Loading a causal language model (a ``save_pretrained`` ``*ForCausalLM`` / ``*LMHeadModel`` checkpoint) for
attribution: a :class:`CausalLMBundle`.

Which kind a checkpoint is comes from its config's ``architectures``: a class named ``...ForCausalLM`` or
``...LMHeadModel`` (GPT-2's) and none ``...ForSequenceClassification`` is a causal LM. The attributed layer is the
token embedding the model uses (``get_input_embeddings()``): it runs exactly once per forward pass, and its output
is what ``inputs_embeds`` replaces, so the engine feeds the interpolated values z through ``inputs_embeds``
(Gemma's sqrt(H) scale lives inside that module, so z includes it, as captum's layer attribution does).
"""

from __future__ import annotations

import inspect
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

CAUSAL_LM = "causal_lm"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_causal_lm_dir(directory) -> bool:
    """Whether ``directory`` (a save_pretrained folder) holds a causal LM without a classification head."""
    path = Path(directory) / "config.json"
    try:
        architectures = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return (any(str(name).endswith(CAUSAL_SUFFIXES) for name in architectures)
            and not any("Classification" in str(name) for name in architectures))


@dataclass
class CausalLMBundle:
    """A causal LM ready for attribution: eval mode, no parameter gradients, on ``device``."""

    model: nn.Module
    tokenizer: object
    device: torch.device
    source: str = ""
    family: str = "hf"
    layout: str = "hf"
    kind: str = CAUSAL_LM
    layer_name: str = "get_input_embeddings()"
    keeps_logits: bool = True     # forward takes ``logits_to_keep`` (the LM head only where a token is scored)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        """One line (the dataclass's repr would print the whole network)."""
        return f"CausalLMBundle({self.architecture}, layer {self.layer_name!r}, device {self.device}, source {self.source!r})"

    @property
    def layer(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def word_embedding(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def num_labels(self) -> int:
        return 0

    @property
    def label_names(self) -> list:
        return []

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def max_positions(self) -> int | None:
        config = self.model.config
        value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(value) if value and value > 0 else None

    @property
    def activation(self) -> str | None:
        config = self.model.config
        return getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)


def is_causal_lm_model(model: nn.Module) -> bool:
    """Whether ``model`` (in memory) is a causal LM (its class ``...ForCausalLM`` / ``...LMHeadModel``)."""
    return type(model).__name__.endswith(CAUSAL_SUFFIXES)


def load_causal_lm(directory, *, config=None, tokenizer=None, device=torch.device("cpu")) -> CausalLMBundle:
    """Load the causal LM in ``directory`` (offline) and its tokenizer (``tokenizer`` or the same folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {"local_files_only": True, "dtype": torch.float32}
    if config is not None:
        kwargs["config"] = AutoConfig.from_pretrained(str(config), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    return causal_lm_bundle(model, tokenizer or directory, device, str(directory))


def causal_lm_bundle(model: nn.Module, tokenizer, device, source: str) -> CausalLMBundle:
    """``model`` in eval mode, without parameter gradients, on ``device``, with its tokenizer (a directory or hub
    name, read with the classifiers' checks, or a tokenizer object)."""
    from .models import _check_tokenizer, load_tokenizer   # the classifiers' checks (real words, vocabulary size)

    model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if isinstance(tokenizer, (str, Path)):
        loaded = load_tokenizer("hf", tokenizer, model)
    else:
        loaded = tokenizer
        _check_tokenizer(loaded, type(loaded).__name__, model)
    bundle = CausalLMBundle(model=model, tokenizer=loaded, device=device, source=source,
                            keeps_logits="logits_to_keep" in inspect.signature(model.forward).parameters)
    self_check(bundle)
    return bundle


def self_check(bundle: CausalLMBundle, sentence: str = "the good movie") -> None:
    """What the engine relies on, checked at every load on one probe sentence: the token embedding runs exactly
    once per forward pass, and the model fed that embedding's output as ``inputs_embeds`` (how the engine feeds the
    path's points) gives the model's own logits on the ids (|diff| <= 1e-4 (1 + max |logit|)), also at the scored
    positions alone (``logits_to_keep``). A model that fails is refused with ``ValueError`` naming its type."""
    model = bundle.model
    name = f"{getattr(model.config, 'model_type', '?')} model ({bundle.architecture})"
    ids = torch.tensor([bundle.tokenizer(sentence, add_special_tokens=False)["input_ids"] or [0]],
                       device=bundle.device)
    mask = torch.ones_like(ids)
    calls = []
    handle = bundle.word_embedding.register_forward_hook(lambda module, args, output: calls.append(output.detach()))
    try:
        with torch.no_grad():
            own = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            embedded = calls[0] if calls else None
            fed = (model(inputs_embeds=embedded, attention_mask=mask, use_cache=False).logits.float()
                   if len(calls) == 1 else None)
            kept = (model(inputs_embeds=embedded, attention_mask=mask, use_cache=False,
                          logits_to_keep=torch.tensor([ids.shape[1] - 1], device=ids.device)).logits.float()
                    if fed is not None and bundle.keeps_logits else None)
    finally:
        handle.remove()
    if len(calls) != 1:
        raise ValueError(f"{name}: its token embedding runs {len(calls) if len(calls) < 4 else 'several'} times per "
                         "forward pass (it must run exactly once); it cannot be attributed as a causal LM")
    tolerance = 1e-4 * (1 + float(own.abs().max()))
    if float((fed - own).abs().max()) > tolerance:
        raise ValueError(f"{name}: fed its own token embeddings as inputs_embeds it does not reproduce its logits "
                         f"(max |difference| {float((fed - own).abs().max()):.3g}); it cannot be attributed as a causal LM")
    if kept is not None and float((kept[:, -1] - own[:, -1]).abs().max()) > tolerance:
        raise ValueError(f"{name}: its logits at the scored positions alone (logits_to_keep) differ from its own")
