"""Baselines, in word-embedding space.

A baseline replaces the word vector at every position of the sentence by one vector ``v``
(the old tool's meaning); position and token-type embeddings are kept, so for BERT the baseline
value of the attributed layer is ``b = Embeddings(word vectors = v, positions, token types)``.

- ``zero``: v = 0
- ``pad`` / ``unk`` / ``mask`` / ``period``: v = the word vector of that token ("." for period)
- ``rand-unif`` / ``rand-norm``: one vector drawn from U[0, 1) / N(0, 1) with a fixed seed, so every
  worker and every restart uses the same one.

With ``keep_special_tokens`` the positions of special tokens ([CLS]/[SEP], XLNet's <sep>/<cls>)
keep the input's word vectors; padding positions always do.
"""

from __future__ import annotations


TOKEN_BASELINES = ("pad", "unk", "mask", "period")
RANDOM_BASELINES = ("rand-unif", "rand-norm")
BASELINES = ("zero",) + TOKEN_BASELINES + RANDOM_BASELINES
RANDOM_SEED = 20_170_301  # fixed: the same random baseline everywhere, always


def random_vector(kind: str, size: int) -> torch.Tensor:
    """The fixed-seed float32 vector of ``size`` used by the ``rand-unif`` / ``rand-norm`` baselines."""
    import torch  # lazily: the launcher reads BASELINES without importing torch

    generator = torch.Generator().manual_seed(RANDOM_SEED)
    if kind == "rand-unif":
        return torch.rand(size, generator=generator)
    if kind == "rand-norm":
        return torch.randn(size, generator=generator)
    raise ValueError(f"not a random baseline: {kind!r}")


def baseline_token_id(tokenizer, baseline: str) -> int:
    """The token id whose word vector is the baseline ``pad``/``unk``/``mask``/``period``."""
    if baseline == "period":
        ids = tokenizer(".", add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("baseline 'period' is not available: the tokenizer has no token for '.'")
        return int(ids[-1])
    token_id = getattr(tokenizer, f"{baseline}_token_id", None)
    if token_id is None:
        raise ValueError(f"baseline {baseline!r} is not available: the tokenizer has no {baseline} token")
    return int(token_id)


def baseline_word_vector(bundle, baseline: str) -> torch.Tensor:
    """The word-space vector ``v`` of ``baseline`` for ``bundle``'s model, on its device."""
    import torch  # lazily: the launcher reads BASELINES without importing torch

    embedding = bundle.word_embedding
    size = embedding.weight.shape[1]
    device = embedding.weight.device
    if baseline == "zero":
        return torch.zeros(size, device=device, dtype=embedding.weight.dtype)
    if baseline in RANDOM_BASELINES:
        return random_vector(baseline, size).to(device=device, dtype=embedding.weight.dtype)
    if baseline in TOKEN_BASELINES:
        token_id = baseline_token_id(bundle.tokenizer, baseline)
        with torch.no_grad():
            return embedding(torch.tensor([[token_id]], device=device))[0, 0]
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")


def baseline_word_vectors(vector: torch.Tensor, word_vectors: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The baseline ``vector`` at every position, shaped like ``word_vectors`` (B, L, H); ``keep``
    (B, L) marks positions that keep the input's own word vectors."""
    out = vector.expand_as(word_vectors).clone()
    out[keep] = word_vectors[keep]
    return out
