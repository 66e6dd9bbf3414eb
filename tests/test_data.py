"""Reading every supported format, and the one-line errors for bad tables (checked through the CLI)."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from texttune.cli.main import main
from texttune.data import LengthGroupedBatchSampler, read_table
from texttune.errors import TexttuneError
from texttune.pipeline import PaddingCollator

FRAME = pd.DataFrame({"id": ["007", "008"], "text": ["NA", "None"], "label": ["pos", "neg"]})


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.parquet", "t.jsonl", "t.csv.gz", "t.jsonl.gz", "t.csv.zip"])
def test_formats_read_as_strings(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    inner = name.removesuffix(".gz").removesuffix(".zip")
    plain = tmp_path / f"plain-{inner}"
    if inner.endswith(".parquet"):
        FRAME.to_parquet(plain)
    elif inner.endswith(".jsonl"):
        FRAME.to_json(plain, orient="records", lines=True)
    else:
        FRAME.to_csv(plain, sep="\t" if inner.endswith(".tsv") else ",", index=False)
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(plain, inner)
    else:
        plain.rename(path)
    frame = read_table(path)
    # "007" stays a string, and the texts "NA" / "None" are texts, not missing values.
    assert frame["id"].tolist() == ["007", "008"]
    assert frame["text"].tolist() == ["NA", "None"]


def _run_train(
    tmp_path: Path, capsys: pytest.CaptureFixture, table: str | bytes, name: str = "train.csv", **data: object
) -> tuple[int, str]:
    path = tmp_path / name
    path.write_bytes(table if isinstance(table, bytes) else table.encode())
    recipe = tmp_path / "recipe.yaml"
    fields = {"train": str(path), "text_columns": "text", "target_columns": ["label"], **data}
    recipe.write_text(yaml.safe_dump({"data": fields, "output": {"dir": str(tmp_path / "out")}}))
    code = main(["-q", "train", str(recipe)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing may be written on bad input"
    return code, err.strip()


# (table, extra data settings, expected message) for every validation error the product promises.
BAD_TABLES = {
    "missing column": ("text,score\na,1\nb,2\n", {}, r"no target column 'label'; available columns: text, score"),
    "semicolons": ("text;label\na;1\nb;2\n", {}, r"available columns: text;label; the header looks ';'-separated"),
    "empty text": ("text,label\nfine,a\n ,b\n", {}, r"row 2 has an empty text in column 'text'"),
    "nan target": (
        "text,a,b\nx,1.5,2\ny,,3\n",
        {"target_columns": ["a", "b"]},
        r"row 2 has no value in target column .a.",
    ),
    "non-numeric": (
        "text,a,b\nx,1.5,2\ny,oops,3\n",
        {"target_columns": ["a", "b"]},
        r"row 2 of target column 'a' is 'oops', not a number",
    ),
    "single class": ("text,label\nx,pos\ny,pos\n", {}, r"column 'label' has a single class 'pos'"),
    "empty file": ("", {}, r"the file is empty"),
    "header only": ("text,label\n", {}, r"has a header but no data rows"),
    "unbalanced quote": ('text,label\n"open,pos\nfine,neg\n', {}, r"unbalanced quote"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_give_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    table, data, expected = BAD_TABLES[case]
    code, err = _run_train(tmp_path, capsys, table, **data)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("texttune: error: ") and "train.csv" in err
    assert re.search(expected, err), err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": str(tmp_path / "nope.csv")}}))
    assert main(["-q", "train", str(recipe)]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


def test_invalid_utf8_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _run_train(tmp_path, capsys, b"text,label\nfine,a\ncaf\xe9,b\n")
    assert code == 2
    assert "line 3 is not valid UTF-8 (byte 0xe9); re-save the file as UTF-8" in err


def test_error_exit_code_from_a_real_process(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": str(tmp_path / "missing.csv")}}))
    done = subprocess.run(
        [sys.executable, "-m", "texttune.cli.main", "train", str(recipe)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"texttune: error: {tmp_path / 'missing.csv'}: file not found; "
        f"check the path (relative paths start at {Path.cwd()})"
    ]


def test_unknown_format_and_bad_archive(tmp_path: Path) -> None:
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(TexttuneError, match="unknown table format '.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "t.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(TexttuneError, match="not a valid gzip file"):
        read_table(tmp_path / "t.csv.gz")
    (tmp_path / "t.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(TexttuneError, match="line 2 is not valid JSON"):
        read_table(tmp_path / "t.jsonl")


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_on_the_tokenizers_side(side: str) -> None:
    collate = PaddingCollator(pad_token_id=0, padding_side=side, pad_to_multiple_of=4)
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
            {"input_ids": [5], "attention_mask": [1], "labels": 0},
        ]
    )
    assert batch["input_ids"].shape == (2, 4)
    expected = [5, 0, 0, 0] if side == "right" else [0, 0, 0, 5]
    assert batch["input_ids"][1].tolist() == expected
    assert batch["attention_mask"][1].sum() == 1 and batch["labels"].tolist() == [1, 0]


def test_length_grouped_batches_cover_every_row_and_vary_by_epoch() -> None:
    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, megabatch_factor=10)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 125
    assert sorted(i for batch in first for i in batch) == list(range(1000))
    assert first != second
    # grouping: lengths inside a batch are far closer than across the data set
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 100
    # the longest batch does not always come first (transformers #20810)
    assert max(lengths[i] for i in first[0]) < max(lengths)


def test_typed_formats_become_the_strings_a_csv_gives(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b", None], "score": [1.5, 2.0, float("nan")], "n": [1, 2, 3]})
    frame.to_parquet(tmp_path / "t.parquet")
    read = read_table(tmp_path / "t.parquet")
    assert read["score"].tolist() == ["1.5", "2.0", ""] and read["n"].tolist() == ["1", "2", "3"]
    assert read["text"].tolist() == ["a", "b", ""]  # missing is empty, so validation names the row


def test_trailing_separators_do_not_shift_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,label\nhello,pos,\nbye,neg,\n")
    read = read_table(tmp_path / "t.csv")
    assert read["text"].tolist() == ["hello", "bye"] and read["label"].tolist() == ["pos", "neg"]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "one\u2028two\u0085three", "label": "a"}\n', encoding="utf-8")
    assert read_table(tmp_path / "t.jsonl")["text"].tolist() == ["one\u2028two\u0085three"]
    (tmp_path / "t.json").write_text('[{"text": "x", "label": 1}, {"text": "y", "label": 2}]')
    assert read_table(tmp_path / "t.json")["label"].tolist() == ["1", "2"]


def test_na_in_a_float_target_is_a_missing_value_not_a_class(tmp_path: Path, capsys) -> None:
    code, err = _run_train(tmp_path, capsys, "text,label\na,1.5\nb,2.5\nc,NA\nd,3.0\n")
    assert code == 2 and "row 3 has no value in target column 'label'" in err


def test_existing_folder_that_is_not_a_bundle_is_never_replaced(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.csv").write_text("keep me")
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"data": {"train": str(tmp_path / "train.csv")}, "output": {"dir": str(tmp_path / "out")}})
    )
    assert main(["-q", "train", str(recipe)]) == 2
    assert "exists and is not a texttune bundle" in capsys.readouterr().err
    assert (tmp_path / "out" / "precious.csv").read_text() == "keep me"


def test_ids_from_typed_formats_stay_exactly_as_stored(tmp_path: Path) -> None:
    big = 2**53 + 1  # a float64 would round it to 2**53
    (tmp_path / "t.jsonl").write_text(f'{{"id": {big}, "text": "a"}}\n{{"id": 7, "text": "b", "extra": null}}\n')
    read = read_table(tmp_path / "t.jsonl")
    assert read["id"].tolist() == [str(big), "7"] and read["extra"].tolist() == ["", ""]
    frame = pd.DataFrame({"id": pd.array([7, None, big], dtype="Int64"), "code": [b"007", b"008", b"009"]})
    frame.to_parquet(tmp_path / "t.parquet")
    read = read_table(tmp_path / "t.parquet")
    assert read["id"].tolist() == ["7", "", str(big)]  # not 7.0, and not rounded
    assert read["code"].tolist() == ["007", "008", "009"]  # not b'007'


def test_rows_swallowed_by_a_quote_are_warned_about_and_prose_with_commas_is_not(tmp_path: Path, caplog) -> None:
    merged = tmp_path / "merged.csv"  # the quote of row 1 closes two rows later: three rows read as one
    merged.write_text('id,text,score\nr1,"an open quote,3\nr2,fine film,4\nr3,ok film",2\nr4,good,5\n')
    essays = tmp_path / "essays.csv"  # paragraphs with many commas, as in essays: no rows inside
    essays.write_text(
        'id,text,score\ne1,"First, a line.\nThen, one, two, three, and more, of it.\nYes, no.",3.5\n'
        'e2,"A short one.\nWith, a, comma, list, here.",4.0\n'
    )
    with caplog.at_level("WARNING"):
        assert len(read_table(essays)) == 2
        assert caplog.text == ""
        assert len(read_table(merged)) == 2
    assert "merged.csv: 1 field(s) span lines that look like whole rows (first: row 1, from line 2)" in caplog.text
