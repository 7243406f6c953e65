"""Pictures of real engine answers: PNG and self-contained HTML, and the accumulated-path numbers."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import intgrads
from intgrads.client import main
from intgrads.pictures import accumulated_attributions, make_figure, render_answer

SENTENCE = "an unexpectedly tender film, though the ending drags"


def hand_accumulated(answer) -> np.ndarray:
    """A[k, t] = sum_{j<=k} w_j sum_h g_j[t, h] (x - b)[t, h], rows in ascending alpha, x - b from two nodes."""
    _, alphas = intgrads.step_sizes_and_alphas(answer["method"], answer["n_steps"])
    alphas = torch.tensor(alphas, dtype=torch.float64)
    z = answer["intermediates"].double()
    w = answer["step_sizes"].double().reshape(-1)
    g = answer["intermediate_gradients"].double()
    if len(alphas) > 1:
        lo, hi = int(alphas.argmin()), int(alphas.argmax())
        difference = (z[hi] - z[lo]) / (alphas[hi] - alphas[lo])
    else:  # one node: x - b = IG / (w g)
        difference = answer["integrated_gradients"][0].double() / (w[0] * g[0])
    order = torch.argsort(alphas)
    per_step = w[:, None] * (g * difference).sum(-1)
    return torch.cumsum(per_step[order], dim=0).numpy()


@pytest.mark.parametrize("method,n_steps", [("gausslegendre", 16), ("riemann_trapezoid", 7), ("gausslegendre", 1)])
def test_accumulated_path_ends_at_the_token_attributions(bundle, method, n_steps):
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=n_steps, method=method)
    alphas, accumulated = accumulated_attributions(answer)
    expected = hand_accumulated(answer)
    np.testing.assert_allclose(accumulated, expected, rtol=1e-9, atol=1e-12)
    attributions = answer["token_attributions"].double().numpy()
    scale = np.abs(attributions).max()
    np.testing.assert_allclose(accumulated[-1], attributions, rtol=0, atol=1e-5 * scale)
    assert np.all(np.diff(alphas) > 0) and accumulated.shape == (n_steps, len(answer["tokens"]))
    # and x - b from the intermediates is the one that makes IG: (x - b) * sum_k w_k g_k
    from intgrads.pictures import path_difference

    total = (answer["step_sizes"].double().view(-1, 1, 1) * answer["intermediate_gradients"].double()).sum(0)
    ig = answer["integrated_gradients"][0].double()
    np.testing.assert_allclose(path_difference(answer) * total.numpy(), ig.numpy(), rtol=0,
                               atol=1e-5 * ig.abs().max().item())


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.polylines, self.data_script = [], [], None
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "polyline":
            self.polylines.append(attrs)
        self._in_data = tag == "script" and attrs.get("id") == "intgrads-data"

    def handle_data(self, data):
        if self._in_data:
            self.data_script = (self.data_script or "") + data

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_data = False


def test_render_png_and_html_from_a_real_answer(bundle, tmp_path):
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=12, target=1)
    attributions = answer["token_attributions"].double().numpy()
    atol = 1e-5 * np.abs(attributions).max()
    expected = hand_accumulated(answer)
    summary = intgrads.summarize_answer(answer)

    # PNG: the path panel's line for token t ends at token_attributions[t]
    figure = make_figure(answer)
    lines = {line.get_gid(): line for ax in figure.axes for line in ax.get_lines() if line.get_gid()}
    assert len(lines) == len(answer["tokens"])
    for t in range(len(answer["tokens"])):
        x_values, y_values = lines[f"token-{t}"].get_data()
        assert y_values[-1] == pytest.approx(attributions[t], abs=atol)
        np.testing.assert_allclose(y_values, expected[:, t], rtol=1e-9, atol=1e-12)
    texts = [text.get_text() for text in figure.texts]
    caption = next(text for text in texts if text.startswith("predicted"))
    assert f"p = {summary['probabilities'][summary['predicted']]:.3f}" in caption
    assert "target: 1" in caption and "convergence delta" in caption

    png = tmp_path / "answer.png"
    picture = render_answer(answer, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    np.testing.assert_allclose(picture.accumulated[-1], attributions, atol=atol, rtol=0)

    # HTML: one page, nothing fetched, the same numbers in its data block and one polyline per token
    page_path = tmp_path / "answer.html"
    render_answer(answer, page_path)
    page = page_path.read_text(encoding="utf-8")
    for fetch in ("http://", "https://", "src=", "href=", "<link", "@import", "url(", "<script src"):
        assert fetch not in page
    parsed = _Collect()
    parsed.feed(page)
    assert "svg" in parsed.tags and "style" in parsed.tags
    assert len(parsed.polylines) == len(answer["tokens"])
    data = json.loads(parsed.data_script)
    assert data["tokens"] == answer["tokens"]
    np.testing.assert_allclose(np.array(data["accumulated"])[-1], attributions, atol=atol, rtol=0)
    assert re.search(r"predicted: .*p = \d\.\d{3}.*target: 1.*convergence delta", page)


def test_render_command_and_bad_inputs(bundle, tmp_path, capsys):
    answer = intgrads.attribute(bundle, SENTENCE, n_steps=4)
    gz = tmp_path / "000001.gzip"
    gz.write_bytes(intgrads.encode_answer(answer))
    assert main(["render", str(gz), "-o", str(tmp_path / "pic.html")]) == 0
    assert (tmp_path / "pic.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert main(["render", str(gz)]) == 0 and (tmp_path / "000001.png").is_file()   # default name: .png
    assert main(["render", str(gz), "-o", str(tmp_path / "pic.bmp")]) == 2
    old = tmp_path / "old.gzip"                          # what the old tool sent: four tensors, no tokens
    old.write_bytes(intgrads.encode_answer({key: answer[key] for key in (
        "integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates")}))
    assert main(["render", str(old), "-o", str(tmp_path / "old.png")]) == 2
    assert "lacks tokens" in capsys.readouterr().err


def test_auto_answer_picture_marks_its_points_and_shows_itself_in_a_notebook(bundle, tmp_path):
    """An n_steps "auto" answer is drawn at its own alphas (ticks mark them); a Picture's repr is one line and it
    renders itself as PNG and HTML for a notebook."""
    answer = intgrads.attribute(bundle, SENTENCE, n_steps="auto", target=1)
    alphas, accumulated = accumulated_attributions(answer)
    np.testing.assert_array_equal(alphas, answer["alphas"].double().numpy())
    attributions = answer["token_attributions"].double().numpy()
    np.testing.assert_allclose(accumulated[-1], attributions, rtol=0, atol=1e-5 * np.abs(attributions).max())
    figure = make_figure(answer)
    ticks = [c for ax in figure.axes for c in ax.collections if c.get_gid() == "path-points"]
    assert len(ticks) == 1 and len(ticks[0].get_segments()) == answer["n_steps"]
    picture = render_answer(answer, tmp_path / "auto.png")
    assert repr(picture) == f"<Picture: {len(answer['tokens'])} tokens, {answer['n_steps']} path points, " \
                            f"{str(tmp_path / 'auto.png')!r}>"
    assert picture._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture._repr_html_().startswith("<img ") and "data:image/png;base64," in picture._repr_html_()
    page = render_answer(answer, tmp_path / "auto.html")
    assert (tmp_path / "auto.html").read_text(encoding="utf-8").count('class="path-points"') == 1
    assert len(page.alphas) == answer["n_steps"]


def _deuteranopia(rgb) -> np.ndarray:
    """Machado, Oliveira and Fernandes (2009), deuteranopia at severity 1, on linear RGB."""
    matrix = np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                       [-0.011820, 0.042940, 0.968881]])
    linear = (np.array(rgb) / 255.0) ** 2.2
    return np.clip(matrix @ linear, 0, 1) ** (1 / 2.2)


def test_a_warned_answer_shows_its_warnings_class_and_idgi_and_colours_mean_the_same_everywhere(bundle, tmp_path):
    """The warnings in a band (PNG and HTML), the attributed class named and whether it is the predicted one, IDGI
    drawn when present, a word's line colour from the word alone, and a diverging map whose ends a deuteranope
    still tells apart (red and green do not)."""
    from intgrads.pictures import diverging_rgb
    from intgrads.pictures.data import MIN_SCALE, NEGATIVE, POSITIVE, colour_scale, token_colour

    from intgrads.engine.diagnostics import answer_warnings

    warned = intgrads.attribute(bundle, SENTENCE, n_steps=2, method="riemann_left", target=0, idgi=True)
    if not warned["warnings"]:   # the tiny model is nearly linear: give the answer the engine's own warning
        warned["warnings"] = answer_warnings(delta=0.5, f_input=1.0, f_baseline=0.2, step_maxima=[1, 1],
                                             alphas=[0, 0.5], n_steps=2, finite=True, full_length=5, max_tokens=9,
                                             method="riemann_left")
    figure = make_figure(warned)
    band = [artist for artist in figure.artists if artist.get_gid() == "warnings"]
    texts = " ".join(text.get_text() for text in figure.texts)
    assert len(band) == 1 and "the integral did not converge" in texts
    predicted = intgrads.summarize_answer(warned)["predicted"]
    texts = " ".join(texts.split())
    named = "(class 0), the predicted class" if predicted == 0 else "(class 0), not the predicted class"
    assert "attributed: 'LABEL_0' " + named in texts, texts
    bars = [patch for ax in figure.axes for patch in ax.patches if patch.get_gid() == "idgi"]
    heights = [bar.get_height() for bar in bars]
    np.testing.assert_allclose(heights, warned["idgi_token_attributions"].double().numpy(), rtol=1e-6)
    page = render_answer(warned, tmp_path / "warned.html") and (tmp_path / "warned.html").read_text(encoding="utf-8")
    assert 'id="warnings" role="alert"' in page and "the integral did not converge" in page
    assert 'id="idgi"' in page and 'id="target"' in page

    confident = intgrads.attribute(bundle, SENTENCE, n_steps=16)
    assert not confident["warnings"]
    figure = make_figure(confident)
    assert not [artist for artist in figure.artists if artist.get_gid() == "warnings"]
    assert 'id="warnings"' not in render_answer(confident, tmp_path / "ok.html").path.read_text(encoding="utf-8")

    # one word, one colour: "film" at another rank in another sentence keeps its line colour
    other = intgrads.attribute(bundle, "film", n_steps=4)
    colours = []
    for answer in (confident, other):
        lines = {line.get_gid(): line for ax in make_figure(answer, top=20).axes for line in ax.get_lines()}
        colours.append(lines[f"token-{answer['tokens'].index('film')}"].get_color())
    assert colours[0] == colours[1] == token_colour("film")

    # the scale is in logit units, never narrower than MIN_SCALE nor |F(x) - F(b)|: weak attributions look pale
    assert colour_scale(np.array([0.01, -0.02]), 0.01) == MIN_SCALE
    assert colour_scale(np.array([0.5, 2.0]), -3.0) == 3.0
    pale = diverging_rgb(-0.02, colour_scale(np.array([0.01, -0.02]), 0.01))
    assert min(pale) > 235
    ends = np.linalg.norm(_deuteranopia(NEGATIVE) - _deuteranopia(POSITIVE))
    red_green = np.linalg.norm(_deuteranopia((0xD7, 0x30, 0x27)) - _deuteranopia((0x1A, 0x98, 0x50)))
    assert ends > 0.5 and ends > 1.5 * red_green, (ends, red_green)
