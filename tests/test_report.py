"""report.html of a cv run: every section there, self-contained (no URL outside the page), and drawn by Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from texttune import load_recipe
from texttune.cli.main import main
from texttune.cv import run_cv
from texttune.plots import lr_find_plot
from texttune.report import baselines
from texttune.task import read_examples

SECTIONS = {"folds", "baselines", "postprocess", "oof", "curves", "worst", "recipe"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.links: list[str] = []  # every src and href
        self.images = 0
        self.rows_in: dict[str, int] = {}
        self.images_in: dict[str, int] = {}
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self._section = values.get("id") or ""
            self.sections.append(self._section)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]
        self.images += tag == "img"
        if tag == "img":
            self.images_in[self._section] = self.images_in.get(self._section, 0) + 1
        if tag == "tr":
            self.rows_in[self._section] = self.rows_in.get(self._section, 0) + 1


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_every_cv_run_writes_a_self_contained_report(write_recipe, tmp_path: Path, task: str) -> None:
    path = write_recipe(task, rows=60, training={"epochs": 2}, cv={"folds": 3})
    run = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'run'}"])).run
    page = (run / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert set(parsed.sections) == SECTIONS
    assert parsed.links and all(link.startswith("data:image/png;base64,") for link in parsed.links)
    assert "http://" not in page and "https://" not in page
    for link in parsed.links:
        assert base64.b64decode(link.split(",", 1)[1]).startswith(b"\x89PNG")
    assert parsed.images == (1 if task == "regression" else 2) + 3  # OOF figures, then a curve per fold
    assert parsed.rows_in["worst"] == 1 + 20  # header, then the 20 worst rows
    assert parsed.rows_in["baselines"] == 1 + 3  # this run, constant, TF-IDF
    assert "texttune cv report" in page and "output" in page  # the recipe, resolved


def test_baselines_score_the_same_folds(write_recipe) -> None:
    recipe = load_recipe(write_recipe("classification", rows=90))
    examples = read_examples(recipe.data.train, recipe.data, recipe.task, recipe.cv)
    folds = np.arange(len(examples)) % 3
    scores = baselines(examples, folds, examples.task)
    majority = np.bincount(examples.targets).max() / len(examples)
    assert scores["constant"]["accuracy"] <= majority + 1e-9  # the training folds' majority, never better
    assert scores["TF-IDF"]["accuracy"] > scores["constant"]["accuracy"]  # the words decide the label here


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)")
def test_chromium_draws_the_report(write_recipe, tmp_path: Path) -> None:
    path = write_recipe("classification", rows=60, training={"epochs": 2}, cv={"folds": 3})
    run = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'run'}"])).run
    shot = Path(os.environ.get("TEXTTUNE_REPORT_SCREENSHOT", tmp_path / "report.png"))
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'ud'}",
         "--window-size=1200,1600", f"--screenshot={shot}", (run / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = image.imread(shot)[..., :3]  # (H, W, 3)
    assert pixels.shape[:2] == (1600, 1200)
    blues = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.45)  # the confusion matrix's and the bars' blues
    assert blues.sum() > 2000, "no figure drawn"


def test_a_multi_seed_run_reports_the_spread_of_its_seeds_and_links_their_reports(
    write_recipe, tmp_path: Path
) -> None:
    path = write_recipe("regression", rows=40, training={"epochs": 1}, cv={"folds": 2, "seeds": [1, 2, 3]})
    run = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'run'}"])).run
    page = (run / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert {"runs", "weights", "oof", "reports"} <= set(parsed.sections) <= {*SECTIONS, "runs", "weights", "reports"}
    assert parsed.rows_in["runs"] == 1 + 3 + 4  # header, each seed, mean, std, the blend twice
    assert parsed.rows_in["weights"] == 1 + 3
    pages = [link for link in parsed.links if not link.startswith("data:")]
    assert pages == [f"seed-{seed}/report.html" for seed in (1, 2, 3)]  # relative: the run moves as a whole
    assert all((run / link).is_file() for link in pages)
    assert "http://" not in page and "https://" not in page
    seeds = json.loads((run / "seeds_report.json").read_text())
    assert f"&plusmn; {np.std(seeds['oof']):.4f}" in page  # the seeds' spread in the heading


def test_the_lr_finder_plot_of_the_recipe_joins_the_report(write_recipe, tmp_path: Path) -> None:
    path = write_recipe("classification", rows=40, training={"epochs": 1}, cv={"folds": 2})
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'run'}"])
    assert main(["-q", "lr-find", str(path), "--set", f"output.dir={tmp_path / 'run'}", "--steps", "8"]) == 0
    assert lr_find_plot(recipe.output.dir).is_file()
    run = run_cv(recipe).run
    parsed = _Page()
    parsed.feed((run / "report.html").read_text())
    assert set(parsed.sections) == SECTIONS | {"lr-find"} and parsed.images_in["lr-find"] == 1
