"""IDGI (Important Direction Gradient Integration) attributions from an answer's own path (no extra pass).

Yang, Wang and Bilgic, "IDGI: A Framework to Eliminate Explanation Noise from Integrated Gradients", CVPR 2023
(arXiv:2303.14242). Integrated gradients spread each step's change of the output, F(z_(i+1)) - F(z_i), over the
elements by g_i * (x - b); much of that spread is along directions that do not change F ("noise"). IDGI keeps
only the part along the gradient itself: over the path points z_0 .. z_(N-1) in increasing alpha, with
g_i = dF/dz at z_i,

    idgi = sum_(i < N-1)  g_i * g_i * (F(z_(i+1)) - F(z_i)) / sum(g_i * g_i)

(elementwise; the sum in the denominator over all of z's elements), so that sum(idgi) = F(z_(N-1)) - F(z_0):
each step's change is shared out in proportion to g_i^2. The answer's points are those of its rule (a fixed
rule's or ``auto``'s), and the change it accounts for is between its first and last point, not between b and x.
"""

from __future__ import annotations

import torch


def idgi_attributions(grads: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """IDGI (T, H) float32 from ``grads`` (N, T, H) and ``outputs`` F(z_i) (N,), points in increasing alpha;
    computed in float64. A step whose gradient is all zero contributes nothing."""
    g = grads.double()
    steps = outputs.double()[1:] - outputs.double()[:-1]
    squares = g[:-1] * g[:-1]
    norms = squares.flatten(1).sum(dim=1)
    share = torch.where(norms > 0, steps / torch.where(norms > 0, norms, torch.ones_like(norms)),
                        torch.zeros_like(norms))
    return (squares * share.view(-1, 1, 1)).sum(dim=0).float()
