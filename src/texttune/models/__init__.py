"""Encoders, pooling heads and losses, each chosen by name from a registry."""

from texttune.models.heads import POOLINGS, TextModel, create_pooling
from texttune.models.losses import LOSSES, create_loss
from texttune.models.registry import BACKBONE_ALIASES, load_backbone, resolve_backbone

__all__ = [
    "BACKBONE_ALIASES",
    "LOSSES",
    "POOLINGS",
    "TextModel",
    "create_loss",
    "create_pooling",
    "load_backbone",
    "resolve_backbone",
]
