"""End to end: the README's curl and loading snippet, answers equal to the engine's, the JSON route,
several models in one server, request forms. Real TorchServe, real HTTP."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap

import pytest
import requests
import torch

import intgrads

from .conftest import post_json

SEED_SNIPPET = textwrap.dedent("""\
    import gzip
    import torch
    from io import BytesIO
    with gzip.open("saved_file.gzip", 'rb') as fobj:
         x = BytesIO(fobj.read())
         grad_dict = torch.load(x)
    print(sorted(k for k in grad_dict if not k.startswith("_")))
    print(tuple(grad_dict["integrated_gradients"].shape), tuple(grad_dict["intermediate_gradients"].shape))
    """)
SEED_KEYS = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates")
SENTENCE = "the movie was good but the ending felt rushed."


def decode(response: requests.Response):
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/gzip")
    with gzip.open(io.BytesIO(response.content), "rb") as handle:
        return torch.load(io.BytesIO(handle.read()), weights_only=True)


def assert_same_answer(served: dict, direct: dict, atol=1e-6):
    assert set(served) == set(direct)
    for key, value in direct.items():
        if isinstance(value, torch.Tensor):
            assert served[key].dtype == value.dtype and served[key].shape == value.shape, key
            torch.testing.assert_close(served[key], value, atol=atol, rtol=1e-6, msg=lambda m: f"{key}: {m}")
        elif isinstance(value, float):
            assert served[key] == pytest.approx(value, abs=atol), key
        else:
            assert served[key] == value, key


def test_readme_curl_and_seed_snippet(server, tmp_path):
    """The curl the launcher prints (the README's) run as is, then the old tool's loading snippet."""
    for model in server.models:
        curl = server.curl_line(model)
        assert "-H 'Content-Type: application/json'" in curl and "--output saved_file.gzip" in curl
        folder = tmp_path / model
        folder.mkdir()
        done = subprocess.run(["bash", "-c", curl + " --silent --show-error --fail"], cwd=folder, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        loaded = subprocess.run([sys.executable, "-c", SEED_SNIPPET], cwd=folder, capture_output=True, text=True,
                                timeout=300)
        assert loaded.returncode == 0, loaded.stderr
        keys = json.loads(loaded.stdout.splitlines()[0].replace("'", '"'))
        assert set(SEED_KEYS) <= set(keys)
        answer = intgrads.load_answer(folder / "saved_file.gzip")
        assert answer["n_steps"] == 50 and answer["method"] == "gausslegendre" and answer["baseline"] == "zero"
        assert answer["intermediate_gradients"].shape[0] == 50


@pytest.mark.parametrize("model", ["bert", "xlnet-base", "hf", "demo"])
@pytest.mark.parametrize("options", [
    {},
    {"n_steps": 7, "target": 0, "baseline": "pad", "method": "riemann_trapezoid"},
    {"n_steps": 5, "target": "predicted", "baseline": "rand-norm", "keep_special_tokens": True},
    {"n_steps": 6, "precision": "bfloat16"},
])
def test_answer_equals_engine(server, direct, model, options):
    """The served answer equals the engine's direct answer with the same settings (1e-6)."""
    response = post_json(server.url(model), {"sequence": SENTENCE, **options})
    served = decode(response)
    settings = {"target": 1, "n_steps": 50, "method": "gausslegendre", "baseline": "zero", **options}
    assert_same_answer(served, direct(model, SENTENCE, **settings))


def test_sequences_list(server, direct):
    sentences = ["a wonderful, moving film.", "the plot was silly and the acting was awful."]
    served = decode(post_json(server.url("bert"), {"sequences": sentences, "n_steps": 6}))
    assert isinstance(served, list) and len(served) == 2
    for one, other in zip(served, direct("bert", sentences, n_steps=6)):
        assert_same_answer(one, other)


def test_json_route_and_explanations(server, direct):
    expected = intgrads.summarize_answer(direct("bert", SENTENCE, n_steps=8))
    for response in (
        post_json(server.url("bert"), {"sequence": SENTENCE, "n_steps": 8}, headers={"Accept": "application/json"}),
        post_json(server.url("bert", "explanations"), {"sequence": SENTENCE, "n_steps": 8}),
    ):
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        summary = response.json()
        assert len(response.content) < 20_000
        assert summary["tokens"] == expected["tokens"]
        assert summary["predicted"] == expected["predicted"] and summary["label"] == expected["label"]
        assert summary["target"] == 1 and summary["n_steps"] == 8
        assert summary["token_attributions"] == pytest.approx(expected["token_attributions"], abs=1e-6)
        assert summary["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        assert summary["convergence_delta"] == pytest.approx(expected["convergence_delta"], abs=1e-6)
    listed = post_json(server.url("hf"), {"sequences": ["good", "bad"], "n_steps": 3},
                       headers={"Accept": "application/json"})
    assert listed.status_code == 200 and [len(item["tokens"]) for item in listed.json()] == [3, 3]


def test_several_models_in_one_server(server):
    listed = server.manage("GET", "/models").json()
    assert sorted(m["modelName"] for m in listed["models"]) == sorted(server.models + server.lm_models)
    families = {}
    for model in server.models:
        answer = decode(post_json(server.url(model), {"sequence": "a fine film", "n_steps": 4}))
        families[model] = (answer["family"], answer["layer"])
    assert families == {"bert": ("bert", "bert.embeddings"), "xlnet-base": ("xlnet-base", "transformer.word_embedding"),
                        "hf": ("hf", "distilbert.embeddings"), "demo": ("hf", "bert.embeddings")}
    assert requests.get(f"{server.base}/ping", timeout=30).json()["status"] == "Healthy"


def test_form_fields_and_plain_text(server, direct):
    expected = direct("bert", "good movie", n_steps=4, target=0)
    # curl --data-urlencode "sequence=..." -d n_steps=4: a form
    form = requests.post(server.url("bert"), data={"sequence": "good movie", "n_steps": "4", "target": "0"}, timeout=300)
    assert_same_answer(decode(form), expected)
    # a text/plain body is the sentence itself, with the server's defaults
    plain = requests.post(server.url("bert"), data="good movie".encode(), headers={"Content-Type": "text/plain"},
                          timeout=300)
    assert_same_answer(decode(plain), direct("bert", "good movie"))
    # the README's curl form, with --data-urlencode, as a subprocess
    done = subprocess.run(["curl", "--silent", "--fail", server.url("bert"), "--data-urlencode", "sequence=good movie",
                           "-d", "n_steps=4", "-d", "target=0", "--output", "-"], capture_output=True, timeout=300)
    assert done.returncode == 0
    assert_same_answer(intgrads.decode_answer(done.stdout), expected)


def test_json_without_content_type_gets_the_working_curl(server):
    """curl -d '{...}' without a Content-Type: TorchServe reads it as a form; the 400 shows the working curl."""
    done = subprocess.run(["curl", "--silent", server.url("bert"), "-d", json.dumps({"sequence": "good"}),
                           "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=300)
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "400"
    error = json.loads(body)["error"]
    assert "Content-Type: application/json" in error and server.url("bert") in error


DEMO_REVIEWS = [
    ("a wonderful, moving film with brilliant acting and a beautiful score.", "positive",
     {"wonderful", "moving", "brilliant", "beautiful"}),
    ("i loved this movie, the cast is great and the story is delightful.", "positive", {"loved", "great", "delightful"}),
    ("a terrible, boring film with awful acting and a stupid plot.", "negative",
     {"terrible", "boring", "awful", "stupid"}),
    ("what a horrible waste of time, the worst movie i have seen.", "negative", {"horrible", "waste", "worst"}),
]


@pytest.mark.parametrize("review,label,words", DEMO_REVIEWS, ids=[r[1] + str(i) for i, r in enumerate(DEMO_REVIEWS)])
def test_demo_classifies_reviews_and_attributes_to_sentiment_words(server, review, label, words):
    response = post_json(server.url("demo"), {"sequence": review, "target": "predicted"},
                         headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["label"] == label, summary["probabilities"]
    assert summary["target"] == summary["predicted"]
    ranked = sorted(zip(summary["token_attributions"], summary["tokens"]), reverse=True)
    assert set(token for _, token in ranked[:3]) & words, ranked[:5]
    assert sum(value for value, token in ranked if token in words) > 0, ranked
