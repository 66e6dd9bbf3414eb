"""The bad-input corpus: tiny files and recipes a user might really hand texttune, each with the one line it must
answer. Every case exits 2 with that line and no traceback, and leaves every file that was there as it was (and
writes none). The inputs it must accept instead (BOM, CRLF, a 5 MB text, a missing output folder) are below."""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from texttune.cli.main import main

GOOD = "id,text,label\n" + "".join(f"r{i},{'good fine' if i % 2 else 'bad dull'} film,{'pos' if i % 2 else 'neg'}\n"
                                   for i in range(20))  # fmt: skip
SCORES = "id,text,a,b\n" + "".join(f"r{i},good film {i},{i % 5}.5,{i % 3}\n" for i in range(20))


def _recipe(tmp: Path, backbone: Path, data: dict | None = None, **sections: dict) -> str:
    recipe = {
        "data": {"train": str(tmp / "train.csv"), "text_columns": "text", "target_columns": "label", **(data or {})},
        "model": {"backbone": str(backbone), "max_length": 32},
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"backend": "none"},
        "output": {"dir": str(tmp / "out")},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _train(table: str | bytes, name: str = "train.csv", data: dict | None = None, **sections: dict):
    """A `train` case on one table file."""

    def case(tmp: Path, backbone: Path) -> list[str]:
        (tmp / name).write_bytes(table if isinstance(table, bytes) else table.encode())
        return ["train", _recipe(tmp, backbone, {"train": str(tmp / name), **(data or {})}, **sections)]

    return case


def _zip(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, GOOD)
    return buffer.getvalue()


def _bundle_case(make: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    """A `predict` case: a real bundle (trained once per test session) is copied into the case's folder first."""
    make.needs_bundle = True  # type: ignore[attr-defined]
    return make


def _predict_input(table: str, extra: list[str] | None = None):
    @_bundle_case
    def case(tmp: Path, backbone: Path) -> list[str]:
        (tmp / "test.csv").write_text(table)
        return [
            "predict",
            str(tmp / "bundle"),
            "--input",
            str(tmp / "test.csv"),
            *(extra or ["--output", str(tmp / "s.csv")]),
        ]

    return case


def _cv(table: str = GOOD, data: dict | None = None, cv: dict | None = None, prepare: Callable | None = None):
    def case(tmp: Path, backbone: Path) -> list[str]:
        (tmp / "train.csv").write_text(table)
        if prepare:
            prepare(tmp)
        return ["cv", _recipe(tmp, backbone, data, cv={"folds": 2, **(cv or {})})]

    return case


def _folder_with_a_git(tmp: Path) -> None:
    (tmp / "out" / ".git").mkdir(parents=True)
    (tmp / "out" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def _recipe_text(text: str, extra: list[str] | None = None):
    def case(tmp: Path, backbone: Path) -> list[str]:
        (tmp / "recipe.yaml").write_text(text)
        return ["train", str(tmp / "recipe.yaml"), *(extra or [])]

    return case


def _with_set(*assignments: str):
    def case(tmp: Path, backbone: Path) -> list[str]:
        (tmp / "train.csv").write_text(GOOD)
        return ["train", _recipe(tmp, backbone), *(f"--set={a}" for a in assignments)]

    return case


def _remote_code_backbone(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    (tmp / "custom").mkdir()
    (tmp / "custom" / "config.json").write_text(json.dumps({"model_type": "custom-thing", "auto_map": {
        "AutoConfig": "configuration.CustomConfig", "AutoModel": "modeling.CustomModel"}}))  # fmt: skip
    return ["train", _recipe(tmp, backbone, model={"backbone": str(tmp / "custom")})]


def _offline_hub_id(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    return ["train", _recipe(tmp, backbone, model={"backbone": "texttune-test/no-such-model"})]


def _output_is_a_file(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    (tmp / "out").write_text("precious")
    return ["train", _recipe(tmp, backbone)]


def _output_not_a_bundle(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return ["train", _recipe(tmp, backbone)]


def _valid_with_unseen_label(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    (tmp / "valid.csv").write_text("id,text,label\nv1,fine,pos\nv2,odd,meh\n")
    return ["train", _recipe(tmp, backbone, {"valid": str(tmp / "valid.csv")})]


def _broken_parquet(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    return ["train", _recipe(tmp, backbone, {"train": str(tmp / "train.parquet")})]


def _lr_find_bad_range(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "train.csv").write_text(GOOD)
    return ["lr-find", _recipe(tmp, backbone), "--start", "1e-2", "--end", "1e-3"]


def _not_a_bundle(tmp: Path, backbone: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["predict", str(tmp / "empty"), "--text", "a film"]


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # tables
    "missing target column": (_train("id,text,score\nr1,a,1\nr2,b,2\n"), r"no target column 'label'; available"),
    "semicolons read as commas": (
        _train("text;label\na;pos\nb;neg\n"),
        r"the header looks ';'-separated, set data.sep",
    ),
    "empty text cell": (
        _train(GOOD.replace("r3,good fine film", "r3, ")),
        r"row 4 has an empty text in column 'text'",
    ),
    "NaN regression target": (
        _train(SCORES.replace(",2.5,", ",nan,"), data={"target_columns": ["a", "b"]}),
        r"has no value in target column 'a'",
    ),  # fmt: skip
    "inf regression target": (
        _train(SCORES.replace(",2.5,", ",inf,"), data={"target_columns": ["a", "b"]}),
        r"of target column 'a' is 'inf', not a number",
    ),  # fmt: skip
    "text in a score column": (
        _train(SCORES.replace(",2.5,", ",high,"), data={"target_columns": ["a", "b"]}),
        r"of target column 'a' is 'high', not a number",
    ),  # fmt: skip
    "decimal comma in one cell": (
        _train(SCORES.replace(",2.5,", ',"2,5",'), data={"target_columns": "a"}),
        r"holds decimal numbers, but row 3 is '2,5'",
    ),  # fmt: skip
    "one number written two ways": (
        _train("text,label\na,1\nb,01\nc,2\nd,1\n"),
        r"labels '01' and '1' of column 'label' are the same number written differently",
    ),  # fmt: skip
    "a single class": (_train("text,label\na,pos\nb,pos\n"), r"has a single class 'pos'"),
    "duplicate ids": (
        _train(GOOD.replace("r7,", "r3,"), data={"id_column": "id"}),
        r"id 'r3' of column 'id' is in rows 4 and 8",
    ),
    "duplicated header": (_train("text,label,label\na,pos,x\nb,neg,y\n"), r"the header names column 'label' 2 times"),
    "unbalanced quote to the end": (
        _train('text,label\n"open,pos\nfine,neg\n'),
        r"never closes \(an unbalanced quote\)",
    ),
    "unbalanced quote merging rows": (
        _train('text,label\n"open film,pos\nfine,neg\nok "done",pos\n'),
        r"look for an unbalanced or stray quote in the row starting on line 2",
    ),  # fmt: skip
    "empty file": (_train(""), r"the file is empty"),
    "header only": (_train("text,label\n"), r"has a header but no data rows"),
    "Latin-1 bytes": (_train(b"text,label\nfine,pos\ncaf\xe9,neg\n"), r"line 3 is not valid UTF-8 \(byte 0xe9\)"),
    "binary file named .csv": (_train(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), r"line 1 is not valid UTF-8"),
    "truncated gzip": (_train(gzip.compress(GOOD.encode())[:30], name="train.csv.gz"), r"not a valid gzip file"),
    "zip with two tables": (_train(_zip("a.csv", "b.csv"), name="train.csv.zip"), r"the zip holds 2 files"),
    "unknown format": (_train("x", name="train.xlsx"), r"unknown table format '.xlsx'"),
    "invalid JSONL line": (
        _train('{"text": "a", "label": "x"}\n{oops\n', name="train.jsonl"),
        r"line 2 is not valid JSON",
    ),
    "broken Parquet": (_broken_parquet, r"not a readable Parquet file"),
    "unseen label in data.valid": (_valid_with_unseen_label, r"row 2 has label 'meh' in 'label', unseen in training"),
    # model and recipe
    "max_length beyond positions": (
        _with_set("model.max_length=600"),
        r"model.max_length 600 is longer than bert supports",
    ),
    "unknown backbone offline": (
        _offline_hub_id,
        r"is not on this machine and the hub cannot be reached; .*set model.backbone to DIR",
    ),
    "backbone needing remote code": (
        _remote_code_backbone,
        r"needs code from its repository to run \(trust_remote_code\)",
    ),
    "malformed --set value": (_with_set("training.epochs=[1,"), r"the value is not valid YAML"),
    "--set of an unknown key": (_with_set("training.epoch=2"), r"unknown key 'training.epoch'; did you mean 'epochs'"),
    "--set without a section": (_with_set("epochs=2"), r"expected section.key=value"),
    "negative learning rate": (_with_set("training.learning_rate=-1"), r"training.learning_rate"),
    "recipe not found": (lambda tmp, backbone: ["train", str(tmp / "nope.yaml")], r"nope.yaml: recipe not found"),
    "recipe with bad YAML": (_recipe_text("data: [unclosed\n"), r"is not valid YAML"),
    "recipe that is a list": (_recipe_text("- data\n"), r"a recipe is a mapping of sections"),
    "lr-find range upside down": (_lr_find_bad_range, r"need 0 < start < end"),
    # outputs
    "output.dir is a file": (_output_is_a_file, r"exists and is not a texttune bundle"),
    "output.dir holds other files": (_output_not_a_bundle, r"exists and is not a texttune bundle"),
    "output.dir in a read-only place": (
        _with_set("output.dir=/proc/texttune-out"),
        r"output.dir /proc/texttune-out: cannot write",
    ),
    "cv in a folder with a .git": (_cv(prepare=_folder_with_a_git), r"is not a texttune cv run \(it holds .git\)"),
    "cv with a class of one row": (_cv(GOOD + "r99,odd film,meh\n"), r"class 'meh' of 'label' has a single row"),
    "cv fold column out of range": (
        _cv(
            GOOD.replace("id,text,label\n", "id,text,label,fold\n")
            .replace("\n", ",7\n")
            .replace("label,fold,7", "label,fold")
        ),
        r"of fold column 'fold' is '7'",
    ),  # fmt: skip
    "cv group column missing": (_cv(cv={"group_column": "writer"}), r"no group column 'writer'"),
    # prediction
    "not a bundle": (_not_a_bundle, r"not a texttune model bundle \(missing texttune.json, model.safetensors\)"),
    "predict input without the text column": (
        _predict_input("id,body\nr1,a\n"),
        r"no text column 'text'; available columns: id, body",
    ),
    "predict input with an empty text": (
        _predict_input("id,text\nr1,fine\nr2,\n"),
        r"row 2 has an empty text in column 'text'",
    ),
    "predict input with merged rows": (
        _predict_input('id,text\nr1,"open\nr2,fine\nr3,ok "x"\n'),
        r"unbalanced or stray quote",
    ),
    "predict input missing": (
        _bundle_case(
            lambda tmp, b: [
                "predict",
                str(tmp / "bundle"),
                "--input",
                str(tmp / "no.csv"),
                "--output",
                str(tmp / "s.csv"),
            ]
        ),
        r"no.csv: file not found",
    ),  # fmt: skip
    "predict --output is a folder": (
        _predict_input("id,text\nr1,fine\n", ["--output", "/tmp"]),
        r"--output /tmp is a folder",
    ),
    "predict --output read-only": (
        _predict_input("id,text\nr1,fine\n", ["--output", "/proc/s.csv"]),
        r"--output /proc/s.csv: cannot write",
    ),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    from texttune import load_recipe, train

    root = tmp_path_factory.mktemp("corpus-bundle")
    (root / "train.csv").write_text(GOOD)
    return train(load_recipe(_recipe(root, tiny_backbone, {"id_column": "id"}))).bundle


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_line(
    name: str, tmp_path: Path, tiny_backbone: Path, request, capsys, monkeypatch
) -> None:
    make, expected = CASES[name]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if getattr(make, "needs_bundle", False):
        import shutil

        shutil.copytree(request.getfixturevalue("bundle"), tmp_path / "bundle")
    argv = make(tmp_path, tiny_backbone)
    before = _files(tmp_path)
    capsys.readouterr()  # what building the shared bundle printed
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("texttune: error: "), err
    assert re.search(expected, err), err
    assert _files(tmp_path) == before, "a file was written, changed or removed"


ACCEPTED = {
    "UTF-8 BOM": (lambda: "\ufeff" + GOOD, lambda frame: list(frame.columns)[0] == "id"),
    "CRLF line ends": (lambda: GOOD.replace("\n", "\r\n"), lambda frame: set(frame["label"]) == {"pos", "neg"}),
    "a 5 MB text": (lambda: GOOD + "r99," + "good " * 1_000_000 + ",pos\n", lambda frame: len(frame) == 21),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_inputs_that_are_fine_are_read_as_meant(name: str, tmp_path: Path) -> None:
    from texttune.data import read_table

    table, check = ACCEPTED[name]
    (tmp_path / "t.csv").write_bytes(table().encode())
    assert check(read_table(tmp_path / "t.csv"))


def test_labels_differing_in_case_train_with_a_warning_naming_them(
    tmp_path: Path, tiny_backbone: Path, caplog
) -> None:
    (tmp_path / "train.csv").write_text(GOOD + "r40,fine film,Pos\nr41,good film,pos \n")
    assert main(["-q", "train", _recipe(tmp_path, tiny_backbone)]) == 0
    assert "labels 'Pos', 'pos', 'pos ' of 'label' differ only in case or spaces" in caplog.text


def test_a_submission_goes_into_a_folder_that_did_not_exist(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "test.csv").write_text("id,text\nr1,fine\nr2,dull\n")
    output = tmp_path / "new" / "deeper" / "s.csv"
    assert main(["-q", "predict", str(bundle), "--input", str(tmp_path / "test.csv"), "--output", str(output)]) == 0
    assert pd.read_csv(output)["id"].tolist() == ["r1", "r2"]
