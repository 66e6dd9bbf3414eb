"""texttune: fine-tune transformer encoders on tables of text, for classification and multi-target regression."""

__version__ = "0.1.0"

from texttune.config import Recipe, load_recipe  # noqa: E402
from texttune.errors import TexttuneError  # noqa: E402
from texttune.predictor import Predictor  # noqa: E402
from texttune.training import TrainResult, train  # noqa: E402

__all__ = ["Predictor", "Recipe", "TexttuneError", "TrainResult", "__version__", "load_recipe", "train"]
