"""Bundles that were tampered with, damaged or made to attack: each refused with one line before anything in it is
used, and no code from any of them runs (a marker file would prove it)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from texttune import load_recipe, train
from texttune.bundle import file_hashes
from texttune.cli.main import main

from .conftest import train_tiny_bundle

MARKER = Path("/tmp/texttune-hostile-bundle-ran-code")


class _Payload:
    """Unpickling this writes the marker: a pickle in a bundle must never be unpickled."""

    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def _rehash(bundle: Path) -> None:
    """Make the description list the files as they are now: a hostile author can do that too."""
    description = json.loads((bundle / "texttune.json").read_text())
    description["files"] = file_hashes(bundle)
    (bundle / "texttune.json").write_text(json.dumps(description))


def _edit_description(bundle: Path, change: Callable[[dict], None]) -> None:
    description = json.loads((bundle / "texttune.json").read_text())
    change(description)
    (bundle / "texttune.json").write_text(json.dumps(description))


def _flip_a_byte(bundle: Path) -> None:
    weights = bytearray((bundle / "model.safetensors").read_bytes())
    weights[-10] ^= 0xFF
    (bundle / "model.safetensors").write_bytes(bytes(weights))


def _truncate(bundle: Path) -> None:
    weights = (bundle / "model.safetensors").read_bytes()
    (bundle / "model.safetensors").write_bytes(weights[: len(weights) // 2])


def _add_pickle(bundle: Path) -> None:
    (bundle / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    _rehash(bundle)


def _pickle_as_weights(bundle: Path) -> None:
    (bundle / "model.safetensors").write_bytes(pickle.dumps(_Payload()))
    _rehash(bundle)


def _symlink_weights(bundle: Path) -> None:
    outside = bundle.parent / "outside.safetensors"
    shutil.move(bundle / "model.safetensors", outside)
    (bundle / "model.safetensors").symlink_to(outside)


def _extra_file(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("added later")


def _missing_file(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()


def _tokenizer_reads_outside(bundle: Path) -> None:
    (bundle.parent / "outside.json").write_text((bundle / "tokenizer.json").read_text())
    settings = json.loads((bundle / "tokenizer_config.json").read_text())
    settings["fast_tokenizer_files"] = ["../outside.json"]
    (bundle / "tokenizer_config.json").write_text(json.dumps(settings))
    _rehash(bundle)


def _remote_code(bundle: Path) -> None:
    (bundle / "evil.py").write_text(f"open({str(MARKER)!r}, 'w')\nclass EvilTokenizer: ...\n")
    settings = json.loads((bundle / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (bundle / "tokenizer_config.json").write_text(json.dumps(settings))
    _rehash(bundle)


def _remote_code_encoder(bundle: Path) -> None:
    def change(description: dict) -> None:
        description["backbone_config"].update(model_type="evil", auto_map={"AutoModel": "evil.EvilModel"})

    _edit_description(bundle, change)


def _labels_do_not_match_the_weights(bundle: Path) -> None:
    _edit_description(bundle, lambda d: d["task"].update(labels=["a", "b", "c", "d", "e"]))


def _huge_encoder_promised(bundle: Path) -> None:
    _edit_description(bundle, lambda d: d["backbone_config"].update(hidden_size=2**20, intermediate_size=2**22))


def _max_length_beyond_positions(bundle: Path) -> None:
    _edit_description(bundle, lambda d: d["pipeline"].update(max_length=4096))


def _future_format(bundle: Path) -> None:
    _edit_description(bundle, lambda d: d.update(format_version=99))


def _ensemble_escapes(bundle: Path) -> None:
    run = bundle.parent / "run"
    run.mkdir()
    (run / "texttune-ensemble.json").write_text(json.dumps({"members": ["../bundle"], "weights": None}))


def _ensemble_symlinked_member(bundle: Path) -> None:
    run = bundle.parent / "run"
    run.mkdir()
    (run / "fold-0").symlink_to(bundle)
    (run / "texttune-ensemble.json").write_text(json.dumps({"members": ["fold-0"], "weights": None}))


def _ensemble_string_weights(bundle: Path) -> None:
    run = bundle.parent / "run"
    shutil.copytree(bundle, run / "fold-0")
    (run / "texttune-ensemble.json").write_text(json.dumps({"members": ["fold-0"], "weights": ["heavy"]}))


def _ensemble_nan_weight(bundle: Path) -> None:
    run = bundle.parent / "run"
    for k in (0, 1):
        shutil.copytree(bundle, run / f"fold-{k}")
    (run / "texttune-ensemble.json").write_text('{"members": ["fold-0", "fold-1"], "weights": [NaN, 1]}')


def _tokenizer_vocab_outside(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    settings = json.loads((bundle / "tokenizer_config.json").read_text())
    settings["vocab"] = "/etc/passwd"
    (bundle / "tokenizer_config.json").write_text(json.dumps(settings))
    _rehash(bundle)


def _corrupt_tokenizer(bundle: Path) -> None:
    (bundle / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    _rehash(bundle)


def _ensemble_without_members(bundle: Path) -> None:
    run = bundle.parent / "run"
    run.mkdir()
    (run / "texttune-ensemble.json").write_text(json.dumps({"members": [], "weights": None}))


def _onnx_reads_outside(bundle: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    (bundle.parent / "secret").write_bytes(b"0123456789abcdef")
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in {"location": "../secret", "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "xy")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (bundle / "model.onnx").write_bytes(model.SerializeToString())
    _edit_description(bundle, lambda d: d.update(exports={"onnx-fp32": {"file": "model.onnx", "passed": True}}))
    _rehash(bundle)


def _export_names_outside(bundle: Path) -> None:
    _edit_description(bundle, lambda d: d.update(exports={"onnx-fp32": {"file": "../x.onnx", "passed": True}}))


HOSTILE = {
    "onnx external data outside": (_onnx_reads_outside, "model.onnx: ONNX Runtime cannot load it"),
    "export names a file outside": (_export_names_outside, "export onnx-fp32 names '../x.onnx', not a file"),
    "modified weights": (_flip_a_byte, "model.safetensors: modified or damaged"),
    "truncated weights": (_truncate, "model.safetensors: modified or damaged"),
    "pickle added": (_add_pickle, "pytorch_model.bin: a pickle-capable file in a bundle"),
    "pickle as weights": (_pickle_as_weights, "model.safetensors: the weights are unreadable"),
    "symlinked weights": (_symlink_weights, "model.safetensors: a symlink inside a bundle"),
    "extra file": (_extra_file, "holds notes.txt, which it did not write"),
    "missing file": (_missing_file, "lacks tokenizer.json"),
    "tokenizer reads outside": (_tokenizer_reads_outside, "tokenizer_config.json: names files by path"),
    "remote-code tokenizer": (_remote_code, "tokenizer_config.json: names files by path or remote code"),
    "remote-code encoder": (_remote_code_encoder, "unreadable bundle description"),
    "labels not matching weights": (_labels_do_not_match_the_weights, "the weights do not load into the model"),
    "max_length beyond positions": (_max_length_beyond_positions, "max_length 4096 is longer than the encoder's"),
    "huge encoder promised": (_huge_encoder_promised, "the weights do not load into the model"),
    "future format": (_future_format, "bundle format version 99 is not supported"),
    "ensemble path traversal": (_ensemble_escapes, "member '../bundle' is not a folder name inside"),
    "ensemble symlinked member": (_ensemble_symlinked_member, "fold-0: a symlink; an ensemble's members are folders"),
    "ensemble string weights": (_ensemble_string_weights, "weights [] do not fit 1 member(s)"),
    "ensemble NaN weight": (_ensemble_nan_weight, "weights [nan, 1.0] do not fit 2 member(s)"),
    "ensemble without members": (_ensemble_without_members, "the manifest names no members"),
    "corrupt tokenizer": (_corrupt_tokenizer, "the tokenizer files are unreadable"),
    "tokenizer vocabulary from outside": (_tokenizer_vocab_outside, "tokenizer_config.json: names files by path"),
}


@pytest.fixture(scope="module")
def clean_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("clean"), tiny_backbone, rows=40, epochs=1)


def test_the_clean_bundle_verifies(clean_bundle: Path, capsys) -> None:
    assert main(["-q", "verify", str(clean_bundle)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors: sha256" in out and out.strip().endswith("verified")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_bundle_is_refused_in_one_line(clean_bundle: Path, tmp_path: Path, capsys, case: str) -> None:
    mutate, expected = HOSTILE[case]
    bundle = tmp_path / "bundle"
    shutil.copytree(clean_bundle, bundle)
    MARKER.unlink(missing_ok=True)
    mutate(bundle)
    target = tmp_path / "run" if (tmp_path / "run").exists() else bundle
    for command in (["predict", str(target), "--text", "a fine film"], ["verify", str(target)]):
        assert main(["-q", *command]) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("texttune: error: "), err
        assert expected in err, err
    assert not MARKER.exists(), "code from the bundle ran"


def test_a_bundle_being_retrained_into_still_loads(clean_bundle: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(clean_bundle, bundle)
    (bundle / ".checkpoints" / "step-4").mkdir(parents=True)  # a training into this folder, going on or killed
    (bundle / ".checkpoints" / "run.json").write_text("{}")
    assert main(["-q", "verify", str(bundle)]) == 0
    assert main(["-q", "predict", str(bundle), "--text", "a fine film"]) == 0


def test_settings_copied_from_the_encoder_never_make_a_bundle_refusable(tmp_path: Path, tiny_backbone: Path) -> None:
    from texttune.testing import synthetic_table

    backbone = tmp_path / "encoder"
    shutil.copytree(tiny_backbone, backbone)
    settings = json.loads((backbone / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["tokenization.Custom", None]}  # the class itself is a native one
    (backbone / "tokenizer_config.json").write_text(json.dumps(settings))
    synthetic_table(30).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(
        f"data: {{train: {tmp_path / 'train.csv'}, text_columns: text, target_columns: label}}\n"
        f"model: {{backbone: {backbone}, max_length: 32}}\ntraining: {{epochs: 1}}\ntracking: {{backend: none}}\n"
        f"output: {{dir: {tmp_path / 'bundle'}}}\n"
    )
    bundle = train(load_recipe(tmp_path / "recipe.yaml")).bundle
    assert "auto_map" not in json.loads((bundle / "tokenizer_config.json").read_text())
    assert main(["-q", "verify", str(bundle)]) == 0
