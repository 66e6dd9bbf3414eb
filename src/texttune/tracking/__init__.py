"""Experiment tracking: every train, cv and lr-find as a run, bundles as versioned models (MLflow, W&B or none).

`start_run` opens a run that can never cost the training; `record` says what goes into it, `log_entry` streams the
training log live; `models.fetch_model` brings a registered version back for `Predictor.load`.
The names load on first use (PEP 562), so `texttune runs` lists a store without importing torch.
"""

from __future__ import annotations

from texttune._lazy import lazy_attributes

_EXPORTS = {
    "BACKENDS": "texttune.tracking.run",
    "TrackedRun": "texttune.tracking.run",
    "start_run": "texttune.tracking.run",
    "log_entry": "texttune.tracking.record",
    "recipe_params": "texttune.tracking.record",
    "record_blend": "texttune.tracking.record",
    "record_bundle": "texttune.tracking.record",
    "record_cv": "texttune.tracking.record",
    "record_lr_find": "texttune.tracking.record",
    "record_seeds": "texttune.tracking.record",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
