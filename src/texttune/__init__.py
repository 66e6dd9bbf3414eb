"""texttune: fine-tune transformer encoders on tables of text, for classification and multi-target regression.

The public names load on first use (PEP 562), so `texttune --version` and the command line's start do not pay for
importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Predictor": "texttune.predictor",
    "Recipe": "texttune.config",
    "load_recipe": "texttune.config",
    "TexttuneError": "texttune.errors",
    "TrainResult": "texttune.training",
    "train": "texttune.training",
}
__all__ = ["Predictor", "Recipe", "TexttuneError", "TrainResult", "__version__", "load_recipe", "train"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'texttune' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
