"""Experiment tracking: every train, cv and lr-find as a run, bundles as versioned models (MLflow, W&B or none).

`start_run` opens a run that can never cost the training; `record` says what goes into it; `TrackingCallback`
streams the Trainer's logs; `models.fetch_model` brings a registered version back for `Predictor.load`.
"""

from texttune.tracking.callback import TrackingCallback
from texttune.tracking.record import recipe_params, record_bundle, record_cv, record_lr_find
from texttune.tracking.run import BACKENDS, TrackedRun, start_run

__all__ = [
    "BACKENDS",
    "TrackedRun",
    "TrackingCallback",
    "recipe_params",
    "record_bundle",
    "record_cv",
    "record_lr_find",
    "start_run",
]
