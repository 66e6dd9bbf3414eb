"""`texttune serve`: a real uvicorn on a free loopback port, in a thread or as the CLI in a subprocess.

Predictions equal `Predictor.predict` row for row (a bundle and a cv ensemble); every refusal has its status and a
readable JSON error; the queue sheds load with 429 and Retry-After; deadlines give 503; a client that leaves is
dropped before its texts reach the model; the playground page is screenshotted by headless Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from matplotlib import image

from texttune import load_recipe
from texttune.cv import run_cv
from texttune.errors import TexttuneError
from texttune.export import export_bundle
from texttune.predictor import Predictor
from texttune.serving import ServeSettings
from texttune.testing import synthetic_table

from .conftest import free_port, serving, train_tiny_bundle

TEXTS = synthetic_table(12, seed=3)["text"].tolist()


class SlowRunner:
    """A runner that takes `seconds` per batch and records the texts of every batch."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds, self.batches = inner, seconds, []

    def __call__(self, batch):
        self.batches.append(len(batch["input_ids"]))
        time.sleep(self.seconds)
        return self.inner(batch)


def slowed(predictor: Predictor, seconds: float) -> tuple[Predictor, SlowRunner]:
    runner = SlowRunner(predictor.runners[0], seconds)
    return Predictor([runner], predictor.pipeline, predictor.info), runner


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("served"), tiny_backbone)


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.load(bundle)


def test_predict_equals_the_predictor_row_for_row_through_the_cli(bundle: Path, predictor: Predictor) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "texttune", "-q", "serve", str(bundle), "--port", str(port)],
        env={**os.environ, "TEXTTUNE_API_KEY": ""}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "texttune serve did not start"
            time.sleep(0.2)
        expected = predictor.predict(TEXTS)
        for body in ({"texts": TEXTS}, {"rows": [{"text": text, "id": 7} for text in TEXTS]}):
            served = httpx.post(f"{url}/predict", json=body).json()["predictions"]
            assert [p["label"] for p in served] == expected["label"].tolist()
            probabilities = np.array([[p["probabilities"][c] for c in predictor.task.labels] for p in served])
            np.testing.assert_allclose(probabilities, expected.filter(like="prob_").to_numpy(), rtol=0, atol=1e-6)
            assert [p["index"] for p in served] == [predictor.task.labels.index(label) for label in expected["label"]]
        info = httpx.get(f"{url}/info").json()
        assert info["labels"] == list(predictor.task.labels) and info["engine"] == "torch"
        assert info["score"]["kind"] == "validation" and "accuracy" in info["score"]
        assert httpx.get(f"{url}/docs").status_code == 200
        assert "/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    finally:
        server.terminate()
        server.wait(10)


def test_an_ensemble_serves_what_the_predictor_predicts(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(
        str(write_recipe("regression", rows=40, training={"epochs": 1}, cv={"folds": 2})),
        [f"output.dir={tmp_path / 'cv'}"],
    )
    run_cv(recipe)
    ensemble = Predictor.load(tmp_path / "cv")
    assert len(ensemble.runners) == 2
    expected = ensemble.predict(TEXTS)
    with serving(ensemble) as url:
        served = httpx.post(f"{url}/predict", json={"texts": TEXTS}).json()["predictions"]
    scores = np.array([[p["scores"][t] for t in ensemble.task.target_columns] for p in served])
    np.testing.assert_allclose(scores, expected.to_numpy(), rtol=0, atol=1e-6)


def test_every_refusal_has_its_status_and_a_readable_error(predictor: Predictor) -> None:
    settings = ServeSettings(max_body_bytes=4000, max_texts=3, max_chars=50)
    with serving(predictor, settings) as url:

        def post(content: str | bytes, **headers: str) -> httpx.Response:
            return httpx.post(
                f"{url}/predict", content=content, headers={"content-type": "application/json", **headers}
            )

        cases = {
            413: [json.dumps({"texts": ["a"] * 4}), json.dumps({"texts": ["word " * 20]}),
                  json.dumps({"texts": ["a"]}) + " " * 4000],
            422: ["{not json", json.dumps({"texts": [1, 2]}), json.dumps({"texts": "one"}), json.dumps({}),
                  json.dumps({"texts": ["a"], "rows": [{"text": "a"}]}), json.dumps({"rows": [{"title": "a"}]}),
                  json.dumps({"texts": ["  "]}), json.dumps({"texts": ["a"], "extra": 1})],
        }  # fmt: skip
        for status, bodies in cases.items():
            for body in bodies:
                response = post(body)
                assert response.status_code == status, (body[:80], response.text)
                error = response.json()["error"]
                assert isinstance(error, str) and 10 < len(error) < 400, error
        assert "at most 3" in post(json.dumps({"texts": ["a"] * 4})).json()["error"]
        assert "'text'" in post(json.dumps({"rows": [{"title": "a"}]})).json()["error"]
        chunked = httpx.post(f"{url}/predict", content=iter([b'{"texts": ["', b"a" * 5000, b'"]}']))
        assert chunked.status_code == 413, chunked.text  # no Content-Length: counted as it streams in
        assert post(json.dumps({"texts": ["a good film"]})).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert 'texttune_requests_total{path="/predict",status="413"} 5.0' in metrics
        assert 'texttune_requests_total{path="/predict",status="422"} 9.0' in metrics
        assert "texttune_batch_texts_bucket" in metrics and "texttune_queue_texts" in metrics
    with serving(predictor, ServeSettings(max_chars=5, truncate=True)) as url:
        cut = httpx.post(f"{url}/predict", json={"texts": ["a good film indeed"]}).json()["predictions"]
        assert cut == predictor.records(predictor.predict_outputs(["a goo"]))


def test_an_api_key_is_required_when_set(predictor: Predictor) -> None:
    with serving(predictor, ServeSettings(api_key="s3cret")) as url:
        body = {"texts": ["a good film"]}
        assert httpx.post(f"{url}/predict", json=body).status_code == 401
        assert httpx.post(f"{url}/predict", content=b"{not json").status_code == 401  # before the body is read
        assert httpx.post(f"{url}//predict/", json=body).status_code == 401
        wrong = httpx.post(f"{url}/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{url}/info").status_code == 401 and httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        right = httpx.post(f"{url}/predict", json=body, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["predictions"][0]["label"]
        assert "s3cret" not in httpx.get(f"{url}/").text


def test_a_full_queue_answers_429_with_retry_after_and_no_request_fails(predictor: Predictor) -> None:
    slow, runner = slowed(predictor, 0.3)
    with serving(slow, ServeSettings(max_queued_texts=4, max_texts=1)) as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(
                    *(client.post(f"{url}/predict", json={"texts": [TEXTS[i % 12]]}) for i in range(24))
                )

        responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 4  # four texts running or waiting, at least
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1 and "capacity" in response.json()["error"]
    assert max(runner.batches) > 1  # queued requests were merged into one run


def test_a_deadline_gives_503_and_a_client_that_left_is_dropped(predictor: Predictor) -> None:
    slow, runner = slowed(predictor, 0.6)
    with serving(slow, ServeSettings(deadline_seconds=0.3)) as url:
        late = httpx.post(f"{url}/predict", json={"texts": ["a good film"]})
        assert late.status_code == 503 and "0.3 s" in late.json()["error"]
    with serving(slow) as url:

        async def leave_early() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                blocker = asyncio.ensure_future(client.post(f"{url}/predict", json={"texts": ["one"]}))
                await asyncio.sleep(0.15)  # the blocker is running; the next two wait in the queue
                with pytest.raises(httpx.TimeoutException):
                    await client.post(f"{url}/predict", json={"texts": ["two", "three"]}, timeout=0.2)
                assert (await blocker).status_code == 200
                await asyncio.sleep(0.8)

        runner.batches.clear()
        asyncio.run(leave_early())
        metrics = httpx.get(f"{url}/metrics").text
    assert runner.batches == [1], runner.batches  # the two texts of the client that left never ran
    assert 'status="499"' in metrics


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)")
def test_the_playground_page_after_a_prediction(predictor: Predictor, tmp_path: Path) -> None:
    shot = Path(os.environ.get("TEXTTUNE_SCREENSHOT", tmp_path / "playground.png"))
    with serving(predictor) as url:
        page = httpx.get(url).text
        assert "texttune playground" in page and "<textarea" not in page  # the boxes are drawn from /info
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'ud'}",
             "--virtual-time-budget=5000", "--window-size=1000,560", f"--screenshot={shot}",
             f"{url}/?text=a%20good%20film"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        metrics = httpx.get(f"{url}/metrics").text
    assert 'texttune_requests_total{path="/predict",status="200"} 1.0' in metrics  # the page asked for it
    pixels = (image.imread(shot)[..., :3] * 255).round()  # (H, W, 3)
    other_classes = np.abs(pixels - [0x8A, 0xA8, 0xDF]).max(axis=-1) <= 2  # the bars of the classes not predicted
    assert other_classes.sum() > 500, "no probability bars drawn"


def test_an_onnx_engine_serves_the_same_predictions(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    export_bundle(copy)
    onnx = Predictor.load(copy, engine="onnx")
    assert onnx.engine == "onnx-fp32"
    with serving(onnx) as url:
        served = httpx.post(f"{url}/predict", json={"texts": TEXTS}).json()["predictions"]
        assert httpx.get(f"{url}/info").json()["fidelity"]["bundle"]["passed"] is True
    probabilities = np.array([[p["probabilities"][c] for c in onnx.task.labels] for p in served])
    torch_ = Predictor.load(copy, engine="torch").predict(TEXTS)
    np.testing.assert_allclose(probabilities, torch_.filter(like="prob_").to_numpy(), rtol=0, atol=1e-5)


class FailingRunner:
    def __call__(self, batch):
        raise RuntimeError("out of memory\nsecond line")


def test_a_model_failure_is_a_one_line_500_and_the_server_goes_on(predictor: Predictor) -> None:
    with serving(predictor) as url:  # warmed up with a working model, then broken
        predictor.runners.append(FailingRunner())  # an ensemble member that fails every run
        try:
            failed = httpx.post(f"{url}/predict", json={"texts": ["a good film"]})
        finally:
            predictor.runners.pop()
        assert failed.status_code == 500 and failed.json() == {
            "error": "the model failed on this request (out of memory)"
        }
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/predict", json={"texts": ["a good film"]}).status_code == 200


def test_limits_that_cannot_work_are_refused() -> None:
    with pytest.raises(TexttuneError, match="a request may hold 64 texts but the queue only 10"):
        ServeSettings(max_queued_texts=10)
    with pytest.raises(TexttuneError, match="deadline must be a positive number"):
        ServeSettings(deadline_seconds=0)
