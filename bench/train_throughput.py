"""Training throughput: texttune's default path against the seed recipe done the plain way, and the matmul ceiling.

One run measures, each in a fresh subprocess (so peak RSS is per measurement), as medians of --repeats:
- baseline: `transformers.Trainer` on AutoModelForSequenceClassification with a Dataset that tokenizes in
  `__getitem__` with padding="max_length" (512, the seed recipe's), fp32, random batches;
- texttune: `texttune.training.prepare` + `fit`, the default path of `texttune train`, unchanged, under the
  allocator the `texttune` command uses (tcmalloc when installed, see texttune/_malloc.py);
- ceiling: this machine's bf16 and fp32 matmul GFLOP/s, and texttune's model FLOPs utilisation (MFU): training
  FLOP/s on real tokens (6 x non-embedding parameters x tokens + 12 x layers x hidden x length^2 per text for
  attention) divided by the bf16 peak.
Workloads: ELLIPSE essays (max_length 512, batch 8) and SST-5 sentences (batch 32), from ../shared/data.

python bench/train_throughput.py [--repeats 3] [--steps 12] [--warmup 3] [--only ellipse|sst5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from texttune._malloc import tcmalloc_environment

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
WORKLOADS = {
    "ellipse": {"recipe": "examples/ellipse.yaml", "batch_size": 8},
    "sst5": {"recipe": "examples/sst5.yaml", "batch_size": 32},
}
SEED_MAX_LENGTH = 512


class TokenMeter:
    """Counts real (non-pad) and padded tokens of every training forward pass, and their attention cost."""

    def __init__(self) -> None:
        self.real: list[int] = []
        self.padded: list[int] = []
        self.squares: list[int] = []  # sum over texts of length^2, for attention FLOPs

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        lengths = mask.sum(dim=1)
        self.real.append(int(lengths.sum()))
        self.padded.append(int(mask.numel()))
        self.squares.append(int((lengths.double() ** 2).sum()))


class StepClock:
    """Wall time at the end of every optimizer step (a TrainerCallback, built lazily to keep imports in children)."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.ends.append(time.perf_counter())

        return _Clock()


def _rows(workload: str, count: int) -> Any:
    from texttune.data import read_table

    path = DATA / ("ellipse_train.csv" if workload == "ellipse" else "sst5_train.tsv")
    return read_table(path).sample(n=count, random_state=0).reset_index(drop=True)


def _non_embedding_parameters(model: Any, embedding_names: set[str]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n not in embedding_names)


def _measure(meter: TokenMeter, clock: Any, warmup: int, batch_size: int, layers: int, hidden: int, params: int):
    steps = len(clock.ends) - warmup
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    real = sum(meter.real[warmup : warmup + steps])
    padded = sum(meter.padded[warmup : warmup + steps])
    attention = 12 * layers * hidden * sum(meter.squares[warmup : warmup + steps])
    flops = 6 * params * real + attention
    return {
        "samples_per_s": steps * batch_size / seconds,
        "tokens_per_s": real / seconds,
        "pad_share": 1 - real / padded,
        "train_gflops": flops / seconds / 1e9,
        "seconds_per_step": seconds / steps,
    }


def run_texttune(workload: str, steps: int, warmup: int, callbacks: tuple = ()) -> dict[str, Any]:
    """texttune's default training path on (warmup + steps) batches, one epoch, no tricks."""
    from texttune import training
    from texttune.config import load_recipe
    from texttune.prepare import prepare
    from texttune.task import parse_examples

    batch_size = WORKLOADS[workload]["batch_size"]
    overrides = [f"training.batch_size={batch_size}", "training.evals_per_epoch=1", "training.stages=null",
                 "training.epochs=1", "training.scheduler=linear"]  # fmt: skip
    recipe = load_recipe(ROOT / WORKLOADS[workload]["recipe"], overrides)
    frame = _rows(workload, (warmup + steps) * batch_size + 8)
    examples = parse_examples(frame.reset_index(drop=True), recipe.data, recipe.task)
    rows = np.arange(len(examples))
    prepared = prepare(recipe, (examples.subset(rows[:-8]), examples.subset(rows[-8:])))
    model = prepared.model
    meter, clock = TokenMeter(), StepClock()
    model.register_forward_pre_hook(meter, with_kwargs=True)
    embeddings = set(model.levels()[-1])
    training.fit(prepared, callbacks=[clock, *callbacks])
    config = model.backbone.config
    params = _non_embedding_parameters(model, embeddings)
    return _measure(meter, clock, warmup, batch_size, config.num_hidden_layers, config.hidden_size, params)


def run_baseline(workload: str, steps: int, warmup: int) -> dict[str, Any]:
    """The seed recipe the plain way: tokenize in __getitem__, pad to max_length, fp32, random batches."""
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from texttune.models.registry import resolve_backbone

    batch_size = WORKLOADS[workload]["batch_size"]
    frame = _rows(workload, (warmup + steps) * batch_size)
    location = resolve_backbone("minilm")
    tokenizer = AutoTokenizer.from_pretrained(location)
    if workload == "ellipse":
        texts = frame["full_text"].tolist()
        targets = frame[["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]]
        labels = targets.astype(float).to_numpy(dtype=np.float32)
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=6, problem_type="regression")
    else:
        texts, labels = frame["Phrase"].tolist(), frame["Sentiment"].astype(int).to_numpy()
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=5)

    class SeedDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(texts)

        def __getitem__(self, index: int) -> dict[str, Any]:
            encoded = tokenizer(texts[index], truncation=True, max_length=SEED_MAX_LENGTH, padding="max_length",
                                return_tensors="pt")  # fmt: skip
            item = {k: v.squeeze(0) for k, v in encoded.items()}
            item["labels"] = torch.as_tensor(labels[index])
            return item

    meter, clock = TokenMeter(), StepClock()
    model.register_forward_pre_hook(meter, with_kwargs=True)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=warmup + steps, per_device_train_batch_size=batch_size, learning_rate=2e-5,
            save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, seed=42, disable_tqdm=True,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=SeedDataset(), callbacks=[clock]).train()
    config = model.config
    params = _non_embedding_parameters(model, {n for n, _ in model.named_parameters() if "embeddings" in n})
    return _measure(meter, clock, warmup, batch_size, config.num_hidden_layers, config.hidden_size, params)


def run_ceiling() -> dict[str, Any]:
    """Matmul GFLOP/s of square bf16 and fp32 products, the best of several timed repeats after warm-up."""
    import torch

    result = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        best = 0.0
        for size in (1024, 2048):
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            for _ in range(3):
                a @ b
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(4):
                    a @ b
                best = max(best, 4 * 2 * size**3 / (time.perf_counter() - started) / 1e9)
        result[f"{name}_gflops"] = best
    return result


def _child(kind: str, workload: str, steps: int, warmup: int) -> None:
    import logging

    import transformers

    logging.disable(logging.INFO)
    transformers.logging.set_verbosity_error()
    os.environ["TQDM_DISABLE"] = "1"
    if kind == "ceiling":
        result = run_ceiling()
    else:
        result = (run_texttune if kind == "texttune" else run_baseline)(workload, steps, warmup)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(kind: str, workload: str, steps: int, warmup: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--workload", workload, "--steps", str(steps),
               "--warmup", str(warmup)]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kind == "texttune":  # the allocator the `texttune` command runs under (texttune._malloc)
        env = {**(tcmalloc_environment() or env), "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if output.returncode or not lines:
        raise SystemExit(f"{kind} {workload} failed:\n{output.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--only", choices=list(WORKLOADS))
    parser.add_argument("--child", choices=["texttune", "baseline", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="ellipse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.workload, args.steps, args.warmup)
        return
    ceiling = _median([_spawn("ceiling", "none", 0, 0) for _ in range(args.repeats)])
    print(f"ceiling: bf16 matmul {ceiling['bf16_gflops']:.0f} GFLOP/s, fp32 {ceiling['fp32_gflops']:.0f} GFLOP/s")
    summary: dict[str, Any] = {"ceiling": ceiling, "repeats": args.repeats, "steps": args.steps}
    for workload in [args.only] if args.only else list(WORKLOADS):
        steps = args.steps
        runs = {kind: [] for kind in ("baseline", "texttune")}
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit both alike
            for kind in runs:
                runs[kind].append(_spawn(kind, workload, steps, args.warmup))
        medians = {kind: _median(values) for kind, values in runs.items()}
        ratio = medians["texttune"]["samples_per_s"] / medians["baseline"]["samples_per_s"]
        mfu = medians["texttune"]["train_gflops"] / ceiling["bf16_gflops"]
        print(
            f"\n{workload} (batch {WORKLOADS[workload]['batch_size']}, {steps} timed steps, median of {args.repeats}):"
        )
        for kind, m in medians.items():
            print(
                f"  {kind:9} {m['samples_per_s']:8.2f} samples/s {m['tokens_per_s']:9.0f} real tokens/s "
                f"{m['pad_share']:6.1%} padding {m['train_gflops']:7.1f} GFLOP/s {m['peak_rss_mb']:7.0f} MB peak RSS"
            )
        print(f"  texttune / baseline: {ratio:.2f}x samples/s; texttune MFU {mfu:.1%} of the bf16 matmul peak")
        summary[workload] = {"baseline": medians["baseline"], "texttune": medians["texttune"], "ratio": ratio,
                             "mfu": mfu}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
