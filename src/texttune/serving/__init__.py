"""The HTTP service of a `Predictor`: `create_app` (FastAPI) over an asyncio micro-batcher."""

from texttune.serving.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
