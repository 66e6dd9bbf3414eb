"""`texttune export`: ONNX files gated against PyTorch on the bundle's validation rows, written into the bundle
atomically and covered by its hashes; a failed gate refuses the export unless forced, and auto never uses it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from texttune import export as export_module
from texttune import load_recipe, runners
from texttune.bundle import load_bundle, verify_bundle
from texttune.cli.main import main
from texttune.cv import run_cv
from texttune.errors import TexttuneError
from texttune.export import export_bundle
from texttune.predictor import Predictor
from texttune.runners import choose_engine
from texttune.testing import synthetic_table

from .conftest import train_tiny_bundle

TEXTS = synthetic_table(10, seed=5)["text"].tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("export"), tiny_backbone)


@pytest.fixture
def bundle(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(trained, copy)
    return copy


def test_an_export_joins_the_bundle_and_auto_uses_it(bundle: Path, capsys) -> None:
    assert main(["export", str(bundle)]) == 0
    assert "model.onnx: onnx-fp32 passed its fidelity gate: rows 12" in capsys.readouterr().out
    record = json.loads((bundle / "texttune.json").read_text())["exports"]["onnx-fp32"]
    assert record["passed"] and record["figures"]["max_abs_difference"] <= 1e-4 and record["cpu"]["flags"]
    assert record["exporter"] in ("dynamo", "legacy")
    assert any("model.onnx: sha256" in line for line in verify_bundle(bundle))
    predictor = Predictor.load(bundle)
    assert predictor.engine == "onnx-fp32" and predictor.card()["fidelity"]["bundle"]["passed"]
    reference = Predictor.load(bundle, engine="torch")
    np.testing.assert_allclose(predictor.predict_outputs(TEXTS), reference.predict_outputs(TEXTS), atol=1e-4)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(TexttuneError, match="model.onnx: modified or damaged"):
        Predictor.load(bundle)


def test_int8_is_kept_when_it_passes_its_gate(bundle: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "MIN_INT8_AGREEMENT", 0.0)  # a random tiny model: any agreement passes
    monkeypatch.setattr(export_module, "MAX_INT8_ACCURACY_DROP", 1.0)
    exports = export_bundle(bundle, quantize=True)[str(bundle)]
    assert [(e.engine, e.passed) for e in exports] == [("onnx-fp32", True), ("onnx-int8", True)]
    record = json.loads((bundle / "texttune.json").read_text())["exports"]["onnx-int8"]
    assert set(record["figures"]) >= {"agreement", "accuracy_torch", "accuracy_int8"} and "reduce_range" in record
    predictor = Predictor.load(bundle)
    assert predictor.engine == "onnx-int8"
    assert predictor.predict(TEXTS)["label"].isin(predictor.task.labels).all()


def test_int8_that_fails_its_gate_is_refused_and_an_older_one_dropped(bundle: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "MAX_INT8_ACCURACY_DROP", 1.0)
    monkeypatch.setattr(export_module, "MIN_INT8_AGREEMENT", 0.0)
    export_bundle(bundle, quantize=True)
    monkeypatch.setattr(export_module, "MIN_INT8_AGREEMENT", 1.01)  # now no int8 export can pass
    with pytest.raises(TexttuneError, match=r"onnx-int8 failed its fidelity gate: rows 12, .*onnx-fp32 written"):
        export_bundle(bundle, quantize=True)
    assert not (bundle / "model.int8.onnx").exists()
    assert "onnx-int8" not in json.loads((bundle / "texttune.json").read_text())["exports"]
    assert Predictor.load(bundle).engine == "onnx-fp32"
    verify_bundle(bundle)


def test_a_bundle_replaced_during_its_export_is_refused(bundle: Path, monkeypatch) -> None:
    original = export_module.add_exports

    def retrained_meanwhile(path, *args, **kwargs):
        description = json.loads((path / "texttune.json").read_text())
        (path / "texttune.json").write_text(json.dumps({**description, "id_column": "id"}, indent=1))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(export_module, "add_exports", retrained_meanwhile)
    with pytest.raises(TexttuneError, match="the bundle was replaced while it was exported"):
        export_bundle(bundle)
    assert not (bundle / "model.onnx").exists()


def test_a_failed_gate_writes_nothing_unless_forced(bundle: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(export_module, "MAX_FP32_DIFFERENCE", -1.0)  # no export can pass
    before = (bundle / "texttune.json").read_text()
    with pytest.raises(TexttuneError, match=r"onnx-fp32 failed its fidelity gate: rows 12, max_abs_difference .*"
                       r"nothing written \(--force keeps a failed export, marked\)"):  # fmt: skip
        export_bundle(bundle)
    assert (bundle / "texttune.json").read_text() == before and not (bundle / "model.onnx").exists()
    assert not list(bundle.parent.glob(".*"))  # no scratch left beside it
    (export,) = export_bundle(bundle, force=True)[str(bundle)]
    assert not export.passed and export.forced
    assert Predictor.load(bundle).engine == "torch"  # auto never takes a failed export
    with caplog.at_level(logging.WARNING):
        assert Predictor.load(bundle, engine="onnx").engine == "onnx-fp32"
    assert "failed its fidelity gate and was kept with --force" in caplog.text


def test_the_gate_reads_the_training_table_and_refuses_one_that_changed(bundle: Path, tmp_path: Path) -> None:
    recipe = load_recipe(bundle / "recipe.yaml")
    moved = tmp_path / "moved.csv"
    shutil.move(recipe.data.train, moved)
    try:
        with pytest.raises(TexttuneError, match="train.csv: not found; .* pass --data TABLE"):
            export_bundle(bundle)
        shuffled = tmp_path / "shuffled.csv"
        synthetic_table(60).sample(frac=1, random_state=0).to_csv(shuffled, index=False)
        with pytest.raises(
            TexttuneError, match=r"shuffled.csv: row \d+ has id .*, not the .* the bundle validated on"
        ):
            export_bundle(bundle, data=shuffled)
        assert export_bundle(bundle, data=moved)[str(bundle)][0].passed
    finally:
        shutil.move(moved, recipe.data.train)


def test_no_export_while_a_training_writes_into_the_folder(bundle: Path) -> None:
    (bundle / ".checkpoints").mkdir()
    with pytest.raises(TexttuneError, match="a training is writing into this folder"):
        export_bundle(bundle)
    assert main(["-q", "export", str(bundle / "nowhere")]) == 2


def test_each_member_of_an_ensemble_is_exported(write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe("regression", rows=40, training={"epochs": 1}, cv={"folds": 2})
    run = tmp_path / "cv"
    run_cv(load_recipe(str(recipe), [f"output.dir={run}"]))
    exports = export_bundle(run)
    assert sorted(Path(member).name for member in exports) == ["fold-0", "fold-1"]
    assert all((run / f"fold-{k}" / "model.onnx").is_file() for k in (0, 1))
    onnx, torch_ = Predictor.load(run), Predictor.load(run, engine="torch")
    assert onnx.engine == "onnx-fp32" and len(onnx.runners) == 2
    np.testing.assert_allclose(onnx.predict(TEXTS).to_numpy(), torch_.predict(TEXTS).to_numpy(), atol=1e-4)


PASSED = {"file": "m.onnx", "passed": True, "reduce_range": True}
FAILED = {"file": "m.onnx", "passed": False, "figures": {"agreement": 0.9}}


@pytest.mark.parametrize(
    ("members", "engine", "chosen"),
    [
        ([{"onnx-fp32": PASSED, "onnx-int8": PASSED}], "auto", "onnx-int8"),
        ([{"onnx-fp32": PASSED, "onnx-int8": FAILED}], "auto", "onnx-fp32"),
        ([{"onnx-fp32": PASSED, "onnx-int8": FAILED}], "onnx", "onnx-fp32"),  # a passed export before a forced one
        ([{"onnx-fp32": FAILED}], "auto", "torch"),
        ([{"onnx-fp32": FAILED}], "onnx", "onnx-fp32"),
        ([{"onnx-fp32": PASSED, "onnx-int8": PASSED}, {"onnx-fp32": PASSED}], "auto", "onnx-fp32"),  # mixed members
        ([{"onnx-fp32": PASSED}, {}], "auto", "torch"),
        ([{"onnx-fp32": PASSED}], "torch", "torch"),
    ],
)
def test_the_engine_is_the_best_every_member_passed(members: list, engine: str, chosen: str) -> None:
    assert choose_engine(members, engine) == chosen


def test_an_engine_some_member_lacks_is_refused() -> None:
    with pytest.raises(TexttuneError, match="engine onnx-int8: a member has no such export"):
        choose_engine([{"onnx-int8": PASSED}, {"onnx-fp32": PASSED}], "onnx-int8")
    with pytest.raises(TexttuneError, match="engine 'gpu' is unknown"):
        choose_engine([{}], "gpu")


def test_an_int8_export_with_8_bit_weights_is_not_auto_on_a_cpu_without_vnni(monkeypatch) -> None:
    monkeypatch.setattr(runners, "cpu_has_vnni", lambda: False)
    eight_bits = {**PASSED, "reduce_range": False}
    assert choose_engine([{"onnx-fp32": PASSED, "onnx-int8": eight_bits}], "auto") == "onnx-fp32"
    assert choose_engine([{"onnx-fp32": PASSED, "onnx-int8": PASSED}], "auto") == "onnx-int8"


def test_int8_quantizes_the_encoder_and_leaves_the_head_in_fp32(bundle: Path, tmp_path: Path) -> None:
    import onnx

    model = load_bundle(bundle).model
    sample = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    export_module.export_onnx(model, sample, tmp_path / "fp32.onnx", "dynamo")
    export_module.quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    producers = {output: node for node in graph.node for output in node.output}
    node, kinds = producers[graph.output[0].name], []
    while node.op_type not in ("MatMul", "Gemm"):  # back from the output to the head's matrix product
        kinds.append(node.op_type)
        node = next(producers[i] for i in node.input if i in producers)
    assert node.op_type in ("MatMul", "Gemm")  # not MatMulInteger or DynamicQuantizeMatMul
    weights = {init.name: init for init in graph.initializer}
    head_weight = next(weights[i] for i in node.input if i in weights)
    assert head_weight.data_type == onnx.TensorProto.FLOAT
    quantized = [n for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul")]
    assert len(quantized) >= 4  # the encoder's projections
