"""How much work a request is, how much a worker may take on, and the deadline that ends a request in time.

Work is counted in multiply-accumulates (MACs) of the forward pass at every interpolation step. A transformer
layer of width H does, per token of a T-token sequence, 12 H^2 MACs in its linear maps (4 H^2 for the query,
key, value and output projections, 8 H^2 for a feed-forward of width 4H) and 2 T H in attention (Q K^T and
the weighted sum of V). The engine pads a request's S sentences to the longest, T, and runs n_steps rows
per sentence, so

    work = S * T * n_steps * L * (12 H^2 + 2 T H)        (L layers; at least one, for the embeddings)

The backward pass to the layer's input costs about as much again; the rates below are measured on whole
attributions, so they include it. A worker's budget is what it can do in half its response timeout:

    budget = rate * threads * response_timeout / 2

with ``rate`` the measured MACs per second of one torch thread on a CPU, or of one worker on a GPU.
"""

from __future__ import annotations

import time

# Measured on whole attributions (docs/benchmarks.md): a bert-base 512-token request at 50 steps ran at
# 17.9 G MAC/s per CPU thread (64 tokens: 34); an H200 ran 5.2-6.6 T MAC/s. Kept below both, so that a
# slower CPU or GPU still finishes what the budget lets in within the response timeout.
CPU_MACS_PER_THREAD = 15e9
GPU_MACS_PER_WORKER = 1e12
BUDGET_SHARE = 0.5        # of the response timeout
DEADLINE_MARGIN = 10.0    # seconds kept back from the response timeout (at most a quarter of it)
G = 1e9


def request_work(lengths, n_steps: int, num_layers: int, hidden: int) -> float:
    """MACs of one request: ``lengths`` the token counts of its sentences (after truncation)."""
    if not lengths:
        return 0.0
    tokens = max(lengths)
    per_token_step = max(1, num_layers) * (12 * hidden * hidden + 2 * tokens * hidden)
    return float(len(lengths) * tokens * n_steps * per_token_step)


def default_budget(response_timeout: float, *, device: str = "cpu", threads: int = 1) -> float:
    """The MACs one request may ask for: what the worker does in ``BUDGET_SHARE`` of its response timeout."""
    rate = GPU_MACS_PER_WORKER if device.startswith("cuda") else CPU_MACS_PER_THREAD * max(1, threads)
    return rate * response_timeout * BUDGET_SHARE


def model_shape(model) -> tuple[int, int]:
    """(layers, hidden width) of a transformers model, read from its config."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None)
    if layers is None:
        layers = getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    return int(layers or 0), int(hidden)


def deadline_for(started: float, response_timeout: float) -> float:
    """A ``time.monotonic()`` deadline: the response timeout from ``started``, less min(10 s, a quarter)."""
    return started + response_timeout - min(DEADLINE_MARGIN, response_timeout / 4)


class DeadlineExceeded(TimeoutError):
    """The attribution stopped between two chunks because its deadline had passed."""

    def __init__(self, done_rows: int, total_rows: int, late_by: float, at_most: bool = False):
        self.done_rows, self.total_rows, self.late_by, self.at_most = done_rows, total_rows, late_by, at_most
        of = f"at most {total_rows}" if at_most else str(total_rows)
        super().__init__(f"the deadline passed after {done_rows} of {of} interpolation rows")


def check_deadline(deadline: float | None, done_rows: int, total_rows: int, device=None, at_most: bool = False):
    """Raise :class:`DeadlineExceeded` when ``deadline`` (``time.monotonic()``) has passed (``total_rows``: all
    the request's rows, or with ``at_most`` the most it may take: ``n_steps="auto"`` does not know them ahead).
    On a GPU, waits for the queued work first, so that the time read is the work's own."""
    if deadline is None:
        return
    if device is not None and getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize(device)
    now = time.monotonic()
    if now > deadline:
        raise DeadlineExceeded(done_rows, total_rows, now - deadline, at_most)
