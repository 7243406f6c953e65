"""Small causal language models built offline: a byte-level BPE tokenizer trained here on inline English text, and
a seeded decoder (Llama, Qwen2, GPT-2 or Gemma shape) written by ``save_pretrained``. The demo's causal LM and the
tests use them; nothing is downloaded.

The weights are drawn, not trained, but put in a realistic regime: embeddings and projections of standard deviation
``INIT_STD`` (instead of transformers' 0.02, under which a 64-wide model's next-token distribution is nearly uniform),
so log-probabilities spread over several nats, attention is not flat, and the norms see real-sized inputs.

    build_tiny_lm(out_dir, kind="llama", seed=0)  -> out_dir (config.json, model.safetensors, tokenizer files)
"""

from __future__ import annotations

from pathlib import Path

TEXT = (
    "The movie was good but the ending felt rushed. The music was wonderful and the actors were great. "
    "I did not like the story, it was slow and boring. What a terrible film, the worst I have seen this year. "
    "The food at the restaurant was delicious and the service was friendly. The weather today is cold and grey. "
    "She said that the book was better than the film. He walked to the station and took the train home. "
    "Review: a charming, funny and moving picture. Sentiment: positive. Review: dull, long and badly acted. "
    "Sentiment: negative. The capital of France is Paris. The capital of Italy is Rome. Water boils at one hundred "
    "degrees. The cat sat on the mat and the dog slept by the door. Questions and answers: what is the answer? "
    "The answer is yes. The answer is no. Thank you very much for your help, it was very kind of you. "
    "Once upon a time there was a little girl who lived in a village near the forest. "
)
SPECIALS = ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
VOCAB_SIZE = 512
INIT_STD = 0.3
KINDS = ("llama", "qwen2", "gpt2", "gemma")


def train_tokenizer(vocab_size: int = VOCAB_SIZE, *, pad: bool = True):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (a few hundred merges on :data:`TEXT`) with a chat template;
    eos and bos are ``<|endoftext|>``; ``pad`` adds a pad token (without it, the pad baseline falls back to eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator([TEXT] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|pad|>" if pad else None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(kind: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, eos: int = 0,
                pad: int | None = None):
    """A transformers config of ``kind`` (one of :data:`KINDS`): ``layers`` layers of width ``hidden``."""
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=pad, initializer_range=INIT_STD)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=256,
                  bos_token_id=eos, eos_token_id=eos, pad_token_id=pad, initializer_range=INIT_STD)
    if kind == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if kind == "gemma":
        return GemmaConfig(**common, head_dim=hidden // heads)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


def tiny_lm(kind: str, tokenizer, *, seed: int = 0, **shape):
    """A seeded ``*ForCausalLM`` of ``kind`` for ``tokenizer`` (eval mode, float32), weights of std INIT_STD."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(kind, len(tokenizer), eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:   # embeddings and projections; norms keep their ones (or Gemma's zeros)
                parameter.normal_(0.0, INIT_STD if "emb" in name or "wte" in name else
                                  1.0 / parameter.shape[-1] ** 0.5, generator=generator)
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    return model.eval()


def build_tiny_lm(out_dir, kind: str = "llama", *, seed: int = 0, pad: bool = True, **shape) -> Path:
    """Write a seeded tiny causal LM of ``kind`` and its tokenizer into ``out_dir`` (``save_pretrained``)."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(pad=pad)
    model = tiny_lm(kind, tokenizer, seed=seed, **shape)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
