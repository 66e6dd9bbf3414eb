"""Ordered layer groups of any encoder, found by introspection: embeddings, each transformer layer, the top.

The transformer layers are the entries of the module lists whose length is the model's layer count: BERT-likes
keep one list (`encoder.layer`), XLM keeps four parallel ones (`attentions`, `ffns`, ...), so a parameter belongs to
layer i when its name passes through `<list>.<i>.` of any of them. Parameters before the first layer form the
embeddings group; those after the last (poolers, final norms, relative position tables) the top group.
Discriminative learning rates and gradual unfreezing consume these groups.

Only outermost lists count, so that each group is one distinct set of layer parameters. ALBERT shares them:
its `num_hidden_layers` layers reuse the `num_hidden_groups` entries of `encoder.albert_layer_groups` (each
holding `inner_group_num` `albert_layers`), so it gets one group per layer group, 1 in the released checkpoints,
and a shared layer is never counted, or given a learning rate, twice.
"""

from __future__ import annotations

import re
from collections import Counter

from torch import nn

from texttune.errors import TexttuneError


def _layer_lists(backbone: nn.Module) -> list[str]:
    """The outermost non-empty module lists of the most likely layer count: num_hidden_layers, else the commonest."""
    lists = {name: len(m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0}
    # Lists inside another list (ALBERT's layers within a layer group) would merge entries of different outer ones.
    lists = {name: n for name, n in lists.items() if not any(name.startswith(f"{other}.") for other in lists)}
    if not lists:
        raise TexttuneError(f"{type(backbone).__name__}: no nn.ModuleList of transformer layers found")
    expected = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    lengths = Counter(lists.values())
    count = expected if expected in lengths else max(lengths, key=lambda n: (lengths[n], n))
    return [name for name, n in lists.items() if n == count]


def layer_groups(backbone: nn.Module, prefix: str = "") -> list[list[str]]:
    """Parameter names of the backbone, bottom to top: [embeddings, layer 0, ..., layer L-1, top].

    Args:
        backbone: a Hugging Face encoder.
        prefix: prepended to every name (e.g. "backbone." when the encoder sits inside a TextModel).
    """
    lists = _layer_lists(backbone)
    pattern = re.compile(rf"^(?:{'|'.join(re.escape(n) for n in lists)})\.(\d+)\.")
    count = len(backbone.get_submodule(lists[0]))
    embeddings: list[str] = []
    layers: list[list[str]] = [[] for _ in range(count)]
    top: list[str] = []
    for name, _ in backbone.named_parameters():
        match = pattern.match(name)
        if match:
            layers[int(match.group(1))].append(prefix + name)
        elif any(layers):
            top.append(prefix + name)
        else:
            embeddings.append(prefix + name)
    return [embeddings, *layers, top]
