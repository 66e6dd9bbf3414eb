"""The Weights & Biases backend (`tracking.backend: wandb`, `pip install texttune[wandb]`).

The same records as MLflow, in W&B's terms: the recipe is the run's config, a cv run and its folds share a W&B
group (with job types cv and fold), evaluations are history rows, the final numbers the summary, plots are run
files and images, and each bundle is a versioned `model` artifact (`NAME` for a model or an ensemble manifest,
`NAME-fold-K` for folds, as the FB3 recipes do). `WANDB_MODE=offline` writes everything under `wandb/`.
There is no `best` alias: choosing it means reading the project's earlier scores from the W&B server.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texttune.config import TrackingConfig


def start(config: TrackingConfig, name: str, tags: Mapping[str, str]) -> WandbRun:
    run_id = uuid.uuid4().hex[:8]
    group = config.group or (f"{name}-{run_id}" if tags["texttune.kind"] == "cv" else None)
    return WandbRun(config, run_id, name, group, dict(tags))


class WandbRun:
    """One W&B run; its children join its group, as W&B has no nested runs."""

    def __init__(self, config: TrackingConfig, run_id: str, name: str, group: str | None, tags: dict[str, str]):
        import wandb

        self.config, self.name, self.group, self.tags = config, name, group, tags
        self.run = wandb.init(
            project=config.experiment,
            id=run_id,
            name=name,
            group=group,
            job_type=tags["job_type"],
            tags=[*config.tags, tags["texttune.kind"]],
            reinit="create_new",  # a cv run stays open while its folds run
        )
        self.where = f"W&B project {config.experiment} ({self.run.settings.mode})"

    def log_params(self, params: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        if step is None:
            self.run.summary.update(dict(metrics))
        else:
            self.run.log(dict(metrics), step=step)

    def log_artifacts(self, directory: Path, path: str | None) -> None:
        import wandb

        target = Path(self.run.dir) / (path or "")
        images: dict[str, Any] = {}
        for file in sorted(p for p in directory.rglob("*") if p.is_file()):
            relative = file.relative_to(directory)
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target / relative)  # files in the run's folder are uploaded with it
            if file.suffix == ".png":
                images[f"plots/{file.stem}"] = wandb.Image(str(file))
        if images:
            self.run.log(images, commit=False)

    def log_model(
        self, directory: Path, path: str, name: str, tags: Mapping[str, str], best: tuple[float, bool] | None
    ) -> str:
        import wandb

        fold = tags.get("texttune.fold")
        artifact = wandb.Artifact(
            f"{name}-fold-{fold}" if fold is not None else name, type="model", metadata={**tags, "path": path}
        )
        artifact.add_dir(str(directory))
        # W&B numbers versions on its server (offline runs get theirs at sync), so an ensemble names its folds by
        # an alias of this run's own; W&B keeps identical files as one version
        alias = f"run-{self.run.id}"
        self.run.log_artifact(artifact, aliases=["latest", alias])
        return f"{artifact.name}:{alias}"

    def child(self, name: str, tags: Mapping[str, str]) -> WandbRun:
        return WandbRun(self.config, uuid.uuid4().hex[:8], f"{self.name}-{name}", self.group, {**self.tags, **tags})

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
