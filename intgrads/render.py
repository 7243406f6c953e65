"""The attribution pictures' former home: they live in :mod:`intgrads.pictures`; this name stays importable
(``from intgrads.render import render_answer``)."""

from .pictures import *  # noqa: F401,F403
from .pictures import __all__  # noqa: F401
