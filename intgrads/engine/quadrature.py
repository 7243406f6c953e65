"""Quadrature rules for the integrated-gradients path integral.

Integrated gradients along the straight path from a baseline ``b`` to the input ``x``::

    IG(x) = (x - b) * integral_0^1 dF(b + a (x - b)) / dx  da
          ~ (x - b) * sum_k w_k * g_k,     g_k = grad F at b + a_k (x - b)

Each rule gives the points ``a_k`` (``alphas``) and weights ``w_k`` (``step_sizes``) with captum's
names, values and order (``captum.attr._utils.approximation_methods``), so that answers can be
compared with captum number for number:

- ``riemann_left``:      a_k = k/n,             k = 0..n-1,  w_k = 1/n
- ``riemann_right``:     a_k = (k+1)/n,         k = 0..n-1,  w_k = 1/n
- ``riemann_middle``:    a_k = (k+1/2)/n,       k = 0..n-1,  w_k = 1/n
- ``riemann_trapezoid``: a_k = k/(n-1),         k = 0..n-1,  w_k = 1/n, halved at both ends
  (captum's weights; they sum to (n-1)/n, not 1)
- ``gausslegendre``:     a_k = (1 + t_k)/2,  w_k = v_k/2, where (t_k, v_k) are the n-point
  Gauss-Legendre nodes and weights on [-1, 1], nodes ascending.

Riemann points are computed in float32 with ``torch.linspace`` (as captum does); the Riemann rules
need n >= 2, Gauss-Legendre n >= 1.
"""

from __future__ import annotations


RIEMANN_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = ("gausslegendre",) + RIEMANN_METHODS


def min_steps(method: str) -> int:
    """The smallest number of steps the rule accepts."""
    return 1 if method == "gausslegendre" else 2


def step_sizes_and_alphas(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Return ``(step_sizes, alphas)``, two lists of ``n_steps`` floats, for ``method``."""
    import numpy as np  # here, not at the top: the launcher reads METHODS without importing numpy/torch
    import torch

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if n_steps < min_steps(method):
        raise ValueError(f"n_steps must be at least {min_steps(method)} for method {method}; got {n_steps}")
    n = n_steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    step_sizes = [1 / n] * n
    if method == "riemann_trapezoid":
        step_sizes[0] /= 2
        step_sizes[-1] /= 2
        alphas = torch.linspace(0, 1, n)
    elif method == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n)
    elif method == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    else:  # riemann_right
        alphas = torch.linspace(1 / n, 1, n)
    return step_sizes, alphas.tolist()
