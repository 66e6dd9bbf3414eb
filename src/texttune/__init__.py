"""texttune: fine-tune transformer encoders on tables of text, for classification and multi-target regression.

The public names load on first use (PEP 562), so `texttune --version` and the command line's start do not pay for
importing torch and transformers.
"""

from __future__ import annotations

from texttune._lazy import lazy_attributes

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

__getattr__ = lazy_attributes(__name__, _EXPORTS)
