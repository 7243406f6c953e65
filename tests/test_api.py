"""The Python API as a notebook uses it: one-line reprs for a model and an answer (never the network or the
tensors), answers that still save and load as the old tool's plain dicts, a picture without a file, and options
that do not go together refused with ValueError as a server refuses them with 400."""

from __future__ import annotations

import gzip
import io

import pytest
import torch

import intgrads
from intgrads.serving.request import DEFAULT_LIMITS, DEFAULT_OPTIONS, RequestError, check_options

SENTENCE = "a wonderful, moving film"


def test_a_bundle_and_an_answer_print_one_short_line(bundles):
    bundle = bundles["hf"]
    text = repr(bundle)
    assert text.startswith("ModelBundle(hf/hf, layer ") and "\n" not in text and len(text) < 300, text
    assert "Linear" not in text and "Embedding(" not in text
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=4, target=1)
    assert isinstance(answer, intgrads.Answer) and isinstance(answer, dict)
    text = repr(answer)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith(f"Answer({len(answer['tokens'])} tokens, predicted ") and "target 1" in text
    assert "n_steps 4 gausslegendre" in text and f"{len(answer)} keys)" in text
    assert answer.summary() == intgrads.summarize_answer(dict(answer))
    many = intgrads.attribute(bundle, [SENTENCE, "dull"], n_steps=4)
    assert [type(item) for item in many] == [intgrads.Answer, intgrads.Answer] and len(repr(many)) < 400


def test_an_answer_saves_as_the_plain_dict_the_old_snippet_loads(bundles, tmp_path):
    answer = intgrads.attribute(bundles["hf"], SENTENCE, n_steps=4)
    payload = intgrads.encode_answer(answer)
    plain = torch.load(io.BytesIO(gzip.decompress(payload)), weights_only=True)   # the README's snippet
    assert type(plain) is dict and plain.keys() == answer.keys()
    assert torch.equal(plain["integrated_gradients"], answer["integrated_gradients"])
    path = tmp_path / "answer.gzip"
    path.write_bytes(intgrads.encode_answer([answer]))
    (loaded,) = intgrads.load_answer(path)
    assert isinstance(loaded, intgrads.Answer) and loaded["tokens"] == answer["tokens"]


def test_a_picture_without_a_file_and_show_outside_a_notebook(bundles, tmp_path):
    answer = intgrads.attribute(bundles["hf"], SENTENCE, n_steps=4)
    picture = intgrads.render_answer(answer)
    assert picture.path is None and picture.tokens == [str(token) for token in answer["tokens"]]
    assert picture._repr_png_().startswith(b"\x89PNG") and picture._repr_html_().startswith("<img ")
    shown = intgrads.show(answer)           # no IPython shell here: the Picture comes back
    assert shown is not None and shown.tokens == picture.tokens
    assert list(tmp_path.iterdir()) == []   # nothing written


@pytest.mark.parametrize("options", [{"n_steps": 20, "tolerance": 0.05}, {"n_steps": 20, "max_steps": 64}])
def test_options_that_do_not_go_together_raise_as_a_server_refuses_them(bundles, options):
    with pytest.raises(RequestError) as refused:
        check_options({**DEFAULT_OPTIONS, **options}, num_labels=2, limits={**DEFAULT_LIMITS, "max_steps": 1000})
    assert refused.value.status == 400 and "tolerance and max_steps go with" in refused.value.message
    with pytest.raises(ValueError, match="tolerance and max_steps go with n_steps=\"auto\""):
        intgrads.attribute(bundles["hf"], SENTENCE, **options)
    if "tolerance" in options:   # with n_steps "auto" they are what it runs with
        answer = intgrads.attribute(bundles["hf"], "a fine film", n_steps="auto", tolerance=0.05, max_steps=64)
        assert answer["tolerance"] == 0.05 and answer["max_steps"] == 64
