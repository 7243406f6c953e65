"""intgrads: integrated and intermediate gradients of transformer sequence classifiers.

The engine behind the intgrads TorchServe handler, usable on its own::

    import intgrads
    bundle = intgrads.load_model("bert", "bert.pth", tokenizer="path/to/tokenizer")
    answer = intgrads.attribute(bundle, "a sentence", target=1, n_steps=50)
"""

from .attribution import attribute
from .baselines import BASELINES
from .codec import decode_answer, encode_answer, load_answer, summarize_answer
from .families import FAMILIES
from .models import ModelBundle, load_model
from .quadrature import METHODS, step_sizes_and_alphas

__all__ = ["attribute", "load_model", "ModelBundle", "encode_answer", "decode_answer", "load_answer",
           "summarize_answer", "step_sizes_and_alphas", "BASELINES", "METHODS", "FAMILIES"]
