"""Post-processing steps: fitted from what they are given, applied in order, written and read as plain data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from texttune.errors import TexttuneError
from texttune.postprocess import STEPS, Clip, PostProcessing, Softmax


def test_clip_learns_the_targets_range_and_softmax_normalises() -> None:
    clip = Clip().fit(None, np.array([[1.0, 2.0], [4.0, 3.0]]))
    assert clip == Clip((1.0, 2.0), (4.0, 3.0))
    np.testing.assert_allclose(clip.apply(np.array([[0.2, 5.7]])), [[1.0, 3.0]])
    np.testing.assert_allclose(Softmax().apply(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_registered_step_round_trips_through_json(name: str) -> None:
    step = STEPS[name]().fit(np.array([[0.5, 1.0]]), np.array([[1.0, 2.0], [3.0, 5.0]]))
    chain = PostProcessing((step,))
    again = PostProcessing.from_list(json.loads(json.dumps(chain.to_list())))
    assert again == chain
    outputs = np.array([[0.3, 7.0], [2.0, -1.0]])
    np.testing.assert_array_equal(again.apply(outputs), chain.apply(outputs))


def test_ensembles_clip_to_the_union_and_unknown_steps_are_refused() -> None:
    members = [PostProcessing((Clip((1.0,), (4.0,)),)), PostProcessing((Clip((2.0,), (5.0,)),))]
    assert PostProcessing.ensemble(members) == PostProcessing((Clip((1.0,), (5.0,)),))
    with pytest.raises(TexttuneError, match="post-process differently"):
        PostProcessing.ensemble([members[0], PostProcessing((Softmax(),))])
    with pytest.raises(TexttuneError, match="unknown post-processing step 'temperature'"):
        PostProcessing.from_list([{"name": "temperature", "t": 2.0}])
