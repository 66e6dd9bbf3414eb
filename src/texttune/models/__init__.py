"""Encoders, pooling heads and losses, each chosen by name from a registry.

The names load on first use (PEP 562): a bundle loaded for prediction imports the heads, not the losses.
"""

from __future__ import annotations

from texttune._lazy import lazy_attributes

_EXPORTS = {
    "BACKBONE_ALIASES": "texttune.models.registry",
    "LOSSES": "texttune.models.losses",
    "POOLINGS": "texttune.models.heads",
    "TextModel": "texttune.models.heads",
    "create_loss": "texttune.models.losses",
    "create_pooling": "texttune.models.heads",
    "load_backbone": "texttune.models.registry",
    "resolve_backbone": "texttune.models.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
