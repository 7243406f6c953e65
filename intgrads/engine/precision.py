"""The arithmetic an attribution runs in: float32 (the default), or bfloat16 / float16 when asked for.

With a reduced precision the forward and backward passes run under ``torch.autocast``: matrix products
(the linear layers, attention scores and their gradients) are computed in the reduced type, while layer
norms, softmax and the loss stay in float32 (autocast's own op lists). What the engine computes itself
stays float32 in every precision:

    z_k = b + a_k (x - b)          the interpolated layer values (float32, the model sees them cast)
    g_k = dF/dz_k                  returned as float32 (rounding of the reduced-type products inside)
    IG  = (x - b) * sum_k w_k g_k  summed in float32

so the answer has the same keys and dtypes in every precision; only its numbers carry the reduced
type's rounding (bfloat16 keeps 8 significant bits, float16 11). ``docs/benchmarks.md`` publishes what
that costs against float32 (relative IG error, |convergence delta|, agreement of the top-5 tokens) and
what it saves. float16 can overflow (|value| > 65504) on real checkpoints; such an answer holds
non-finite values and says so in its warnings.

bfloat16 pays on CPUs with AVX512-BF16 or AMX and on GPUs; float16 pays on GPUs only (a CPU runs it slower
than float32).
"""

from __future__ import annotations

import contextlib

# No torch import at module level: the request parser and the launcher's --help read PRECISIONS without torch.
PRECISIONS = ("float32", "bfloat16", "float16")
DEFAULT_PRECISION = "float32"


def check_precision(precision) -> str:
    """Return ``precision`` if it names one of :data:`PRECISIONS`, else raise ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def computing_in(precision: str, device) -> contextlib.AbstractContextManager:
    """The context the model's passes run in: nothing for float32, ``torch.autocast`` otherwise."""
    if precision == DEFAULT_PRECISION:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, precision))
