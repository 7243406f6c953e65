"""intgrads.prepare_answer / encode_answer(outputs=..., dtype=...): key selection and float16 answers."""

from __future__ import annotations

import gzip
import io

import pytest
import torch

import intgrads
from intgrads.answer.codec import DTYPES, prepare_answer
from intgrads.answer.keys import COMPACT_OUTPUTS, DTYPE_NAMES, ENDPOINT_NAMES, OUTPUT_NAMES
from intgrads.answer.rebuild import is_compact, rebuild_intermediates

METADATA = ("target", "n_steps", "method", "baseline", "keep_special_tokens", "layer", "truncated", "family",
            "layout", "activation", "warnings")


@pytest.fixture(scope="module")
def answer(bundles):
    return intgrads.attribute(bundles["bert"], "the plot was silly but honest.", n_steps=4)


def snippet_load(payload: bytes):
    """The README's snippet: gzip.open -> BytesIO -> torch.load."""
    with gzip.open(io.BytesIO(payload), "rb") as handle:
        return torch.load(io.BytesIO(handle.read()), weights_only=True)


def test_names_agree():
    assert tuple(DTYPES) == DTYPE_NAMES
    assert set(OUTPUT_NAMES) <= {"integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates",
                                 "alphas", "step_outputs", "tokens", "input_ids", "token_attributions", "logits",
                                 "convergence_delta"}


def test_default_is_unchanged(answer):
    same = prepare_answer(answer)
    assert list(same) == list(answer) and all(same[key] is answer[key] for key in answer)
    assert not set(ENDPOINT_NAMES) & set(answer)   # x and b only with endpoints=True
    plain = snippet_load(intgrads.encode_answer(answer))
    explicit = snippet_load(intgrads.encode_answer(answer, dtype="float32"))
    for key, value in answer.items():
        if isinstance(value, torch.Tensor):
            assert explicit[key].dtype == value.dtype and torch.equal(explicit[key], plain[key]), key


def test_outputs_keep_metadata_and_drop_the_rest(answer):
    kept = snippet_load(intgrads.encode_answer(answer, outputs=["integrated_gradients", "tokens"]))
    assert set(kept) == {"integrated_gradients", "tokens"} | {k for k in answer if k not in OUTPUT_NAMES}
    assert set(METADATA) <= set(kept)
    assert torch.equal(kept["integrated_gradients"], answer["integrated_gradients"])
    no_intermediates = prepare_answer(answer, outputs=[n for n in OUTPUT_NAMES if n != "intermediates"])
    assert "intermediates" not in no_intermediates and "intermediate_gradients" in no_intermediates


def test_float16_casts_floats_only(answer):
    half = snippet_load(intgrads.encode_answer(answer, dtype="float16"))
    assert set(half) == set(answer)
    for key, value in answer.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert half[key].dtype == torch.float16, key
            torch.testing.assert_close(half[key].float(), value, atol=1e-3, rtol=1e-3)
        elif isinstance(value, torch.Tensor):
            assert half[key].dtype == value.dtype and torch.equal(half[key], value), key
        else:
            assert half[key] == value, key
    assert len(intgrads.encode_answer(answer, dtype="float16")) < len(intgrads.encode_answer(answer))


def test_lists_and_bad_values(answer):
    both = prepare_answer([answer, answer], outputs=["logits"], dtype="float16")
    assert isinstance(both, list) and len(both) == 2 and both[0]["logits"].dtype == torch.float16
    assert "integrated_gradients" not in both[1]
    with pytest.raises(ValueError, match="outputs may name integrated_gradients"):
        prepare_answer(answer, outputs=["attention"])
    with pytest.raises(ValueError, match="dtype must be one of float32, float16"):
        prepare_answer(answer, dtype="bfloat16")


@pytest.mark.parametrize("model,method", [("bert", "gausslegendre"), ("xlnet", "riemann_trapezoid"), ("hf", "riemann_left")])
def test_compact_answers_rebuild_bitwise(cases, bundles, model, method):
    """x and b instead of the intermediates: about half the bytes, and the rebuilt answer is the whole one, key
    for key and bit for bit; x and b are captum's layer values at the input and the baseline."""
    sentences = ["the plot was silly but honest.", "a fine film."]
    answers = intgrads.attribute(bundles[model], sentences, n_steps=6, method=method, baseline="pad", endpoints=True)
    whole = snippet_load(intgrads.encode_answer(answers, outputs=list(OUTPUT_NAMES)))
    compact_bytes = intgrads.encode_answer(answers, outputs=list(COMPACT_OUTPUTS))
    compact = snippet_load(compact_bytes)
    assert is_compact(compact) and not is_compact(whole)
    rebuilt = rebuild_intermediates(compact)
    for one, other in zip(rebuilt, whole):
        assert list(one) == list(other)
        for key, value in other.items():
            assert torch.equal(one[key], value) if isinstance(value, torch.Tensor) else one[key] == value, key
    for small, big in zip(compact, whole):   # N x T x H values replaced by 2 x T x H
        numel = [sum(v.numel() for v in item.values() if isinstance(v, torch.Tensor)) for item in (small, big)]
        tokens_by_hidden = big["integrated_gradients"].numel()
        assert numel[0] == numel[1] - 6 * tokens_by_hidden + 2 * tokens_by_hidden
    oracle = cases[model].captum(sentences[0], n_steps=6, method=method, baseline="pad")
    torch.testing.assert_close(compact[0]["layer_input"], oracle["x"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact[0]["layer_baseline"], oracle["b"], rtol=1e-5, atol=1e-6)


def test_compact_float16_and_refusals(bundles, answer):
    with_ends = intgrads.attribute(bundles["bert"], "the plot was silly but honest.", n_steps=4, endpoints=True)
    half = snippet_load(intgrads.encode_answer(with_ends, outputs=list(COMPACT_OUTPUTS), dtype="float16"))
    rebuilt = rebuild_intermediates(half)
    assert rebuilt["intermediates"].dtype == torch.float16
    torch.testing.assert_close(rebuilt["intermediates"].float(), answer["intermediates"], atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="not a compact answer"):
        rebuild_intermediates(prepare_answer(answer))


def test_import_and_launcher_help_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, intgrads, intgrads.launcher as l\n"
            "try:\n    l.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert callable(intgrads.encode_answer) and "prepare_answer" in dir(intgrads)


@pytest.mark.parametrize("size", [0, 1, 65534, 65535, 65536, 3 * 65535 + 7])
def test_stored_gzip_is_what_any_gzip_reader_reads(size):
    """gzip_stored against the standard library's reader: the same bytes back, the size formula, the header."""
    from intgrads.answer.codec import gzip_stored

    data = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
    data = data.numpy().tobytes()
    payload = gzip_stored(data)
    assert gzip.decompress(payload) == data
    assert len(payload) == size + 18 + 5 * max(1, -(-size // 65535))
    assert payload[:4] == b"\x1f\x8b\x08\x00" and payload[10] & 0b110 == 0


def test_level_0_answers_load_with_the_snippet_and_equal_level_1(answer):
    stored = intgrads.encode_answer(answer, level=0)
    compressed = intgrads.encode_answer(answer)
    assert stored != compressed and len(stored) > len(compressed)
    a, b = snippet_load(stored), snippet_load(compressed)
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key]
    assert torch.equal(snippet_load(intgrads.encode_answer(answer, level=0, dtype="float16"))["intermediates"],
                       answer["intermediates"].half())
    with pytest.raises(ValueError, match="level must be one of 0, 1"):
        intgrads.encode_answer(answer, level=9)
