"""A screenshot of `mlflow ui` on a texttune store: the runs table with cv runs expanded to their folds and the
chosen metric columns, as a person would look at it (issue 7).

Needs Chromium (Debian's `chromium`) and Playwright to drive it (`pip install playwright`, in any environment; no
browser download: the system Chromium is used). Neither is a texttune dependency; `--mlflow` is the `mlflow`
command of texttune's environment.

python bench/mlflow_ui_screenshot.py --mlflow .venv/bin/mlflow [--store sqlite:///texttune-runs/mlflow.db]
    [--output mlflow_ui.png]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(mlflow: str, store: str, port: int) -> subprocess.Popen:
    command = [mlflow, "ui", "--backend-store-uri", store]
    server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("mlflow ui did not start in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///texttune-runs/mlflow.db")
    parser.add_argument("--experiment", default="texttune")
    parser.add_argument("--output", default="mlflow_ui.png")
    parser.add_argument("--metrics", nargs="+", default=["oof_mcrmse", "best_mcrmse"])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--mlflow", default=str(Path(sys.executable).with_name("mlflow")))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = _serve(args.mlflow, args.store, port)
    try:
        query = (
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={quote(args.experiment)}"
        )
        with urllib.request.urlopen(query, timeout=30) as answer:
            experiment = json.load(answer)["experiment"]["experiment_id"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs")
            page.get_by_text("matching runs").wait_for(timeout=60_000)
            assistant = page.get_by_text("MLflow Assistant")
            if assistant.count():  # the chat panel takes a third of the width
                page.locator('[aria-label="Close"]').first.click()
            for expand in page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').all():
                expand.click()  # a cv run's folds, nested under it
            page.get_by_role("button", name="Columns", exact=True).click()
            tree = page.get_by_test_id("column-selector-tree")
            for label in ("Dataset", "Models"):
                tree.get_by_text(label, exact=True).click()
            for metric in args.metrics:
                page.get_by_placeholder("Search columns").fill(metric)
                page.wait_for_timeout(500)
                item = tree.get_by_text(metric, exact=True)
                if not item.is_visible():
                    tree.locator('[class*="tree-switcher"]').first.click()  # open the filtered "Metrics (1)"
                item.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.output)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
