"""A causal LM's request inside the engine: what it reads, what it scores, and the gradients at the path points.

**Feeding.** The input is the prompt (text, or chat ``messages`` through the tokenizer's chat template with the
generation prompt) followed by the target tokens (teacher-forced text, or the model's own greedy generation). The
model reads the L = P + T - 1 positions ``prompt + target[:-1]``; target token t (0-based) is scored at position
P + t - 1, from the positions before it only (causal attention).

**Path.** With x (L, H) the token-embedding output at the input and b its baseline (the baseline token's vector, or
0, at every position that moves; ``interpolate="prompt"`` keeps the earlier target tokens real, b = x there):

    z(a) = b + a (x - b),     F_t(z) = score of target token t at position P + t - 1

One forward pass over z gives every F_t at once, each on its own interpolated prefix: by causality F_t(z) depends
on z[:P + t] only, which is exactly captum's layer attribution of prompt + target[:t] scored at its last position.

**Scores.** From the logits l at a scored position: ``logprob`` log_softmax(l)[y_t] (default), ``prob`` its exp,
``logit`` l[y_t]; with ``contrast`` tokens c_t the score is score(y_t) - score(c_t). The LM head runs only at the T
scored positions (``logits_to_keep``), never over the whole sequence.

**Gradients.** g_t = dF_t/dz (L, H) for every t from the one graph of a chunk of rows: T vector-Jacobian products on
the retained graph (rows ``"rows"``) or one batched product (``"batched"``, ``is_grads_batched``); rows measured
faster on CPU (docs/causal-lm.md). Per row only what the answer needs is kept: the token integrand
(x - b) . g_t summed over H (T, L), sum_h g_t^2 (for IDGI) and max |g_t|, plus g itself when the full tensors are
asked for. Rows run in chunks of ``chunk_rows``; the deadline is checked before each chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .baselines import BASELINES, RANDOM_BASELINES, baseline_token_id, random_vector
from .budget import check_deadline
from .precision import computing_in

SCORES = ("logprob", "prob", "logit")
INTERPOLATIONS = ("all", "prompt")
LM_BASELINES = tuple(dict.fromkeys(("pad", "zero", "eos", "unk") + BASELINES))
DEFAULT_LM_BASELINE = "pad"   # the pad token's vector, else eos's: see docs/causal-lm.md (zero's corner at a = 0)
DEFAULT_MAX_NEW_TOKENS = 16
MAX_NEW_TOKENS = 256
VJP_MODES = ("rows", "batched")
DEFAULT_VJP = "rows"


@dataclass
class Encoded:
    """One request's tokens: ``ids`` (L,) the positions the model reads, ``prompt_length`` P, ``target_ids`` (T,),
    ``contrast_ids`` (T,) or None, whether the target was ``generated``, ``special`` (L,) the special tokens."""

    ids: torch.Tensor
    prompt_length: int
    target_ids: torch.Tensor
    contrast_ids: torch.Tensor | None
    generated: bool
    special: torch.Tensor

    @property
    def positions(self) -> torch.Tensor:
        """The scored positions P - 1 .. P + T - 2."""
        return torch.arange(self.prompt_length - 1, self.prompt_length - 1 + len(self.target_ids))


def prompt_ids(tokenizer, sequence=None, messages=None) -> list:
    """The prompt's token ids: ``sequence`` with the tokenizer's special tokens (a BOS where it adds one), or
    ``messages`` through its chat template with the generation prompt."""
    if (sequence is None) == (messages is None):
        raise ValueError("send either sequence (the prompt text) or messages (a chat), not both")
    if messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("messages need a chat template, and this model's tokenizer has none: send the prompt as "
                             "sequence")
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise ValueError('messages must be a non-empty list of {"role": text, "content": text}')
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        if not isinstance(sequence, str) or not sequence.strip():
            raise ValueError("sequence must be the prompt: non-empty text")
        ids = tokenizer(sequence, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError("the prompt has no token the model reads")
    return list(ids)


def text_ids(tokenizer, text, name: str) -> list:
    """A target or contrast text's token ids (no special tokens added)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be text (the continuation to attribute, teacher-forced after the prompt); "
                         f"got {text!r}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{name} {text!r} has no token the model reads")
    return list(ids)


def generate(bundle, prompt: list, max_new_tokens: int) -> list:
    """Greedy continuation of ``prompt`` (``model.generate``, no sampling), up to ``max_new_tokens`` tokens, ending
    at the model's eos token when it comes first (kept)."""
    from transformers import GenerationConfig

    tokenizer = bundle.tokenizer
    eos = bundle.model.config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=pad)
    ids = torch.tensor([prompt], device=bundle.device)
    with torch.no_grad():
        out = bundle.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt):].tolist()


def baseline_token(tokenizer, baseline: str) -> int:
    """The token whose vector is a token baseline (:func:`~intgrads.engine.baselines.baseline_token_id`), but
    ``pad`` is the eos token when the tokenizer has no pad token (as most causal LMs' have none)."""
    if baseline == "pad" and getattr(tokenizer, "pad_token_id", None) is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("baseline 'pad' is not available: the tokenizer has no pad token (nor eos)")
        return int(tokenizer.eos_token_id)
    return baseline_token_id(tokenizer, baseline)


def layer_ends(bundle, encoded: Encoded, baseline: str, interpolate: str, keep_special: bool):
    """x, b (L, H) float32: the embedding output at the input, and the path's start (the baseline where a position
    moves: every position, or with ``interpolate="prompt"`` the prompt's only; special tokens stay with
    ``keep_special``)."""
    embedding = bundle.model.get_input_embeddings()
    with torch.no_grad():
        x = embedding(encoded.ids.view(1, -1).to(bundle.device))[0].float()
        if baseline == "zero":
            vector = torch.zeros_like(x[0])
        elif baseline in RANDOM_BASELINES:
            vector = random_vector(baseline, x.shape[1]).to(x.device)
        else:
            token = torch.tensor([[baseline_token(bundle.tokenizer, baseline)]], device=bundle.device)
            vector = embedding(token)[0, 0].float()
    moves = torch.ones(len(encoded.ids), dtype=torch.bool)
    if interpolate == "prompt":
        moves[encoded.prompt_length:] = False
    if keep_special:
        moves &= ~encoded.special
    moves = moves.to(x.device)
    b = torch.where(moves.view(-1, 1), vector.expand_as(x), x)
    return x, b


def scores_of(logits: torch.Tensor, encoded: Encoded, score: str) -> torch.Tensor:
    """F (R, T) float32 from the logits (R, T, V) at the scored positions."""
    logits = logits.float()
    values = logits.log_softmax(dim=-1) if score in ("logprob", "prob") else logits

    def pick(ids):
        return values.gather(2, ids.to(values.device).view(1, -1, 1).expand(values.shape[0], -1, 1)).squeeze(2)

    picked = pick(encoded.target_ids)
    if score == "prob":
        picked = picked.exp()
    if encoded.contrast_ids is None:
        return picked
    other = pick(encoded.contrast_ids)
    return picked - (other.exp() if score == "prob" else other)


def forward_scores(bundle, z: torch.Tensor, encoded: Encoded, score: str, precision: str) -> torch.Tensor:
    """F (R, T) at the rows z (R, L, H): one forward pass, the LM head only at the scored positions."""
    positions = encoded.positions.to(z.device)
    kwargs = {"logits_to_keep": positions} if bundle.keeps_logits else {}
    with computing_in(precision, z.device):
        logits = bundle.model(inputs_embeds=z, attention_mask=torch.ones(z.shape[:2], dtype=torch.long,
                                                                         device=z.device), use_cache=False,
                              **kwargs).logits
    if not bundle.keeps_logits:
        logits = logits[:, positions]
    return scores_of(logits, encoded, score)


def endpoint_scores(bundle, x, b, encoded: Encoded, score: str, precision: str):
    """F(x) and F(b), each (T,) float32, in one no-grad pass."""
    with torch.no_grad():
        both = forward_scores(bundle, torch.stack([x, b]), encoded, score, precision)
    return both[0], both[1]


def path_rows(bundle, x, b, encoded: Encoded, *, score: str, precision: str, chunk_rows: int, keep_grads: bool,
              deadline=None, vjp: str = DEFAULT_VJP):
    """The ``evaluate(alphas (R,), done, total)`` of :mod:`.paths` for one request. For rows r at a_r it returns

        integrands (R, T, L)   (x - b) . g_(r,t) summed over H
        outputs    (R, T)      F_t(z_r)
        squares    (R, T, L)   sum_h g_(r,t)^2          (IDGI)
        maxima     (R, T)      max |g_(r,t)|            (the spike warning)
        grads      (R, T, L, H) g itself, or None unless ``keep_grads``
    """
    difference = x - b
    steps_t = len(encoded.target_ids)

    def evaluate(alphas, done, total):
        alphas = alphas.to(x.device)
        rows_n, (length, hidden) = len(alphas), x.shape
        integrands = torch.empty(rows_n, steps_t, length, device=x.device)
        squares = torch.empty_like(integrands)
        outputs = torch.empty(rows_n, steps_t, device=x.device)
        maxima = torch.empty(rows_n, steps_t, device=x.device)
        grads = torch.empty(rows_n, steps_t, length, hidden) if keep_grads else None
        for start in range(0, rows_n, chunk_rows):
            check_deadline(deadline, done + start, total, x.device)
            rows = slice(start, min(start + chunk_rows, rows_n))
            with torch.enable_grad():
                z = (b + alphas[rows].view(-1, 1, 1) * difference).requires_grad_()
                values = forward_scores(bundle, z, encoded, score, precision)
                for t, g in _vjps(values, z, vjp):
                    g = g.float()
                    integrands[rows, t] = (g * difference).sum(dim=-1)
                    squares[rows, t] = (g * g).sum(dim=-1)
                    maxima[rows, t] = g.abs().flatten(1).amax(dim=1)
                    if keep_grads:
                        grads[rows, t] = g.cpu()
            outputs[rows] = values.detach()
        return integrands, outputs, squares, maxima, grads

    return evaluate


def _vjps(values: torch.Tensor, z: torch.Tensor, vjp: str):
    """(t, dF_t/dz) for every target token t, from the one graph of ``values`` (R, T) over ``z`` (R, L, H)."""
    steps_t = values.shape[1]
    if vjp == "batched":
        eye = torch.eye(steps_t, device=values.device, dtype=values.dtype)
        (grads,) = torch.autograd.grad(values, z, grad_outputs=eye.view(steps_t, 1, steps_t).expand(
            steps_t, values.shape[0], steps_t), is_grads_batched=True)
        yield from enumerate(grads)
        return
    for t in range(steps_t):
        (g,) = torch.autograd.grad(values[:, t].sum(), z, retain_graph=t < steps_t - 1)
        yield t, g
