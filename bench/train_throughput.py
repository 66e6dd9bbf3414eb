"""Training and evaluation throughput: texttune against two plain `transformers.Trainer` baselines, and the ceiling.

Contenders, each measured in a fresh subprocess (so peak RSS is per measurement), as medians of --repeats:
- seed: the seed recipe the plain way: a Dataset that tokenizes in `__getitem__` with padding="max_length" (512),
  fp32, random batches, AutoModelForSequenceClassification;
- trainer: a well-configured plain Trainer: `datasets.map` tokenization once, `DataCollatorWithPadding`,
  `group_by_length=True`, bf16 where this CPU has it natively, else fp32, and the recipe's encoder dropout;
- texttune: `texttune.training.prepare` + `fit`, the default path of `texttune train`, under the allocator the
  `texttune` command uses (tcmalloc when installed, see texttune/_malloc.py).
Each is timed training (optimizer steps) and evaluating (one full pass over --eval-rows validation rows, with each
contender's own evaluation batching; fewer steps and rows for the seed recipe, whose every one costs the same). The
ceiling is this machine's matmul GFLOP/s in the precision texttune trains
in here (bf16 only where the CPU has it natively; fp32 is always measured too); MFU is training FLOP/s on real
tokens (6 x non-embedding parameters x tokens + 12 x layers x hidden x length^2 per text for attention) over it.

--isa avx2 runs every contender with torch's, oneDNN's and MKL's kernels capped at AVX2 (and texttune reading the
cap, see texttune/_hardware.py): the same cores behaving as an AVX2-only CPU, in fp32.

Workloads: ELLIPSE essays (max_length 512, batch 8) and SST-5 sentences (batch 32), from ../shared/data.

python bench/train_throughput.py [--repeats 3] [--steps 12] [--warmup 3] [--only ellipse|sst5] [--isa avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from texttune._hardware import cpu_has_bf16, cpu_model_and_flags
from texttune._malloc import tcmalloc_environment

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
WORKLOADS = {
    "ellipse": {"recipe": "examples/ellipse.yaml", "batch_size": 8, "eval_rows": 200},
    "sst5": {"recipe": "examples/sst5.yaml", "batch_size": 32, "eval_rows": 1000},
}
ELLIPSE_TARGETS = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]
SEED_MAX_LENGTH = 512
CONTENDERS = ("seed", "trainer", "texttune")
# The seed recipe pads every text to 512 tokens, so each of its steps and rows costs the same: fewer of them
# measure it as well, and keep the benchmark's run time down (its SST-5 steps are 60x slower than texttune's).
SEED_STEPS, SEED_WARMUP, SEED_EVAL_ROWS = 4, 1, 160
AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


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


def _rows(workload: str, count: int, offset: int = 0) -> Any:
    """`count` rows of the workload's table in a fixed shuffled order, from `offset` (evaluation rows come after
    the training rows)."""
    from texttune.data import read_table

    path = DATA / ("ellipse_train.csv" if workload == "ellipse" else "sst5_train.tsv")
    table = read_table(path).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return table.iloc[offset : offset + count].reset_index(drop=True)


def _texts_and_labels(workload: str, frame: Any) -> tuple[list[str], np.ndarray]:
    if workload == "ellipse":
        return frame["full_text"].tolist(), frame[ELLIPSE_TARGETS].astype(float).to_numpy(dtype=np.float32)
    return frame["Phrase"].tolist(), frame["Sentiment"].astype(int).to_numpy()


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


def _timed_evaluation(trainer: Any, dataset: Any, warmup_rows: int = 16) -> dict[str, float]:
    """One full evaluation pass after a short one (the first call pays one-off costs)."""
    trainer.evaluate(eval_dataset=dataset.select(range(warmup_rows)))
    started = time.perf_counter()
    trainer.evaluate(eval_dataset=dataset)
    return {"eval_samples_per_s": len(dataset) / (time.perf_counter() - started)}


def run_texttune(
    workload: str, steps: int, warmup: int, callbacks: tuple = (), overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """texttune's default training path on (warmup + steps) batches, one epoch, no tricks (`overrides`: recipe
    settings to try instead)."""
    from texttune import training
    from texttune.config import load_recipe
    from texttune.prepare import prepare
    from texttune.task import parse_examples

    batch_size = WORKLOADS[workload]["batch_size"]
    scratch = tempfile.mkdtemp(prefix="texttune-bench-")  # nothing is written into the project
    settings = [f"training.batch_size={batch_size}", "training.evals_per_epoch=1", "training.stages=null",
                "training.epochs=1", "training.scheduler=linear", "training.checkpoints=false",
                f"output.dir={scratch}/run", *overrides]  # fmt: skip
    recipe = load_recipe(ROOT / WORKLOADS[workload]["recipe"], settings)
    frame = _rows(workload, (warmup + steps) * batch_size + 8)
    examples = parse_examples(frame, recipe.data, recipe.task)
    rows = np.arange(len(examples))
    prepared = prepare(recipe, (examples.subset(rows[:-8]), examples.subset(rows[-8:])))
    model = prepared.model
    meter, clock = TokenMeter(), StepClock()
    model.register_forward_pre_hook(meter, with_kwargs=True)
    embeddings = set(model.levels()[-1])
    training.fit(prepared, callbacks=[clock, *callbacks])
    shutil.rmtree(scratch)
    config = model.backbone.config
    params = _non_embedding_parameters(model, embeddings)
    return _measure(meter, clock, warmup, batch_size, config.num_hidden_layers, config.hidden_size, params)


def evaluate_texttune(workload: str, rows: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A full pass of texttune's evaluation (the Trainer's `evaluate` with token-budget batches) over `rows`."""
    from texttune.config import load_recipe
    from texttune.data import EncodedDataset
    from texttune.prepare import prepare
    from texttune.task import parse_examples
    from texttune.training import stage_trainer

    recipe = load_recipe(ROOT / WORKLOADS[workload]["recipe"], ["training.stages=null", *overrides])
    frame = _rows(workload, rows + 16)
    examples = parse_examples(frame, recipe.data, recipe.task)
    indices = np.arange(len(examples))
    prepared = prepare(recipe, (examples.subset(indices[:16]), examples.subset(indices[16:])))
    valid = prepared.valid_set
    with tempfile.TemporaryDirectory() as scratch:
        stage = recipe.training.stage_plan()[0]
        trainer = stage_trainer(prepared, stage, 0, scratch, [])
        trainer.evaluate(eval_dataset=EncodedDataset(valid.features[::-1][:16], valid.labels[::-1][:16]))
        started = time.perf_counter()
        trainer.evaluate()
        return {"eval_samples_per_s": rows / (time.perf_counter() - started)}


def _plain_model(workload: str, kind: str) -> Any:
    """The encoder with the library's classification head. The well-configured Trainer gets the recipe's encoder
    dropout (0 on essays: it also lets SDPA take its fused kernel), so that the ratio measures the engine, not the
    recipe; the seed recipe keeps the checkpoint's."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from texttune.config import load_recipe
    from texttune.models.registry import resolve_backbone

    location = resolve_backbone("minilm")
    labels = {"num_labels": 6, "problem_type": "regression"} if workload == "ellipse" else {"num_labels": 5}
    config = AutoConfig.from_pretrained(location, **labels)
    dropout = load_recipe(ROOT / WORKLOADS[workload]["recipe"]).model.backbone_dropout
    if kind == "trainer" and dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return AutoModelForSequenceClassification.from_pretrained(location, config=config)


def _plain_trainer(workload: str, kind: str, steps: int, scratch: str, train: Any, callbacks: list) -> Any:
    """A plain Trainer: the seed recipe's settings, or the well-configured ones."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from texttune.models.registry import resolve_backbone

    batch_size = WORKLOADS[workload]["batch_size"]
    well = kind == "trainer"
    args = TrainingArguments(
        output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=2e-5,
        per_device_eval_batch_size=batch_size, save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=True, seed=42, disable_tqdm=True, bf16=well and cpu_has_bf16(),
        train_sampling_strategy="group_by_length" if well else "random",  # transformers 5's group_by_length=True
    )  # fmt: skip
    collator = DataCollatorWithPadding(AutoTokenizer.from_pretrained(resolve_backbone("minilm"))) if well else None
    return Trainer(model=_plain_model(workload, kind), args=args, train_dataset=train, data_collator=collator,
                   callbacks=callbacks)  # fmt: skip


def _plain_dataset(workload: str, kind: str, frame: Any) -> Any:
    """The seed recipe's Dataset (tokenize and pad to 512 in `__getitem__`), or a `datasets` table tokenized once."""
    import torch
    from transformers import AutoTokenizer

    from texttune.models.registry import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    texts, labels = _texts_and_labels(workload, frame)
    if kind == "trainer":
        import datasets

        datasets.disable_progress_bars()
        table = datasets.Dataset.from_dict({"text": texts, "labels": labels.tolist()})
        return table.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=SEED_MAX_LENGTH),
            batched=True,
            remove_columns=["text"],
        )

    class SeedDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(texts)

        def __getitem__(self, index: int) -> dict[str, Any]:
            encoded = tokenizer(texts[index], truncation=True, max_length=SEED_MAX_LENGTH, padding="max_length",
                                return_tensors="pt")  # fmt: skip
            item = {k: v.squeeze(0) for k, v in encoded.items()}
            item["labels"] = torch.as_tensor(labels[index])
            return item

        def select(self, indices: range) -> Any:  # as `datasets.Dataset.select`, for the warm-up pass
            return torch.utils.data.Subset(self, list(indices))

    return SeedDataset()


def run_plain(workload: str, kind: str, steps: int, warmup: int) -> dict[str, Any]:
    """Training steps of a plain Trainer (`kind`: seed or trainer)."""
    batch_size = WORKLOADS[workload]["batch_size"]
    train = _plain_dataset(workload, kind, _rows(workload, (warmup + steps) * batch_size))
    meter, clock = TokenMeter(), StepClock()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = _plain_trainer(workload, kind, warmup + steps, scratch, train, [clock])
        trainer.model.register_forward_pre_hook(meter, with_kwargs=True)
        trainer.train()
    model = trainer.model
    config = model.config
    params = _non_embedding_parameters(model, {n for n, _ in model.named_parameters() if "embeddings" in n})
    return _measure(meter, clock, warmup, batch_size, config.num_hidden_layers, config.hidden_size, params)


def evaluate_plain(workload: str, kind: str, rows: int) -> dict[str, Any]:
    """A full pass of a plain Trainer's `evaluate` over `rows`, at its training batch size."""
    valid = _plain_dataset(workload, kind, _rows(workload, rows))
    with tempfile.TemporaryDirectory() as scratch:
        trainer = _plain_trainer(workload, kind, 1, scratch, valid, [])
        return _timed_evaluation(trainer, valid)


def run_ceiling() -> dict[str, Any]:
    """Matmul GFLOP/s of square products, the best of several timed repeats after warm-up: fp32 always, bf16 only
    where the CPU has it (elsewhere torch emulates it, slowly and single-threaded)."""
    import torch

    result = {}
    dtypes = (("bf16", torch.bfloat16),) if cpu_has_bf16() else ()
    for name, dtype in (*dtypes, ("fp32", torch.float32)):
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


def _child(kind: str, workload: str, steps: int, warmup: int, eval_rows: int, overrides: list[str]) -> None:
    import logging

    import transformers

    logging.disable(logging.INFO)
    transformers.logging.set_verbosity_error()
    os.environ["TQDM_DISABLE"] = "1"
    contender, _, part = kind.partition(":")
    if contender == "ceiling":
        result = run_ceiling()
    elif part == "eval":
        result = evaluate_texttune(workload, eval_rows, overrides) if contender == "texttune" else None
        result = result or evaluate_plain(workload, contender, eval_rows)
    else:
        result = run_texttune(workload, steps, warmup, overrides=overrides) if contender == "texttune" else None
        result = result or run_plain(workload, contender, steps, warmup)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(kind: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    eval_rows = args.eval_rows or WORKLOADS.get(workload, {}).get("eval_rows", 0)
    steps, warmup = args.steps, args.warmup
    if kind.startswith("seed"):
        steps, warmup, eval_rows = min(steps, SEED_STEPS), min(warmup, SEED_WARMUP), min(eval_rows, SEED_EVAL_ROWS)
    command = [sys.executable, __file__, "--child", kind, "--workload", workload, "--steps", str(steps),
               "--warmup", str(warmup), "--eval-rows", str(eval_rows)]  # fmt: skip
    command += [f"--set={override}" for override in args.overrides]
    env = dict(os.environ)  # with the AVX2 cap, where main() set it
    if kind.startswith("texttune"):  # the allocator the `texttune` command runs under (texttune._malloc)
        env = tcmalloc_environment() or env
    env.update({"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
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
    parser.add_argument("--eval-rows", type=int, help="rows of the timed evaluation pass (default per workload)")
    parser.add_argument("--only", choices=list(WORKLOADS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="a comma-separated subset")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="texttune recipe overrides")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="ellipse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.workload, args.steps, args.warmup, args.eval_rows, args.overrides)
        return
    if args.isa == "avx2":
        os.environ.update(AVX2_CAP)  # this process reads the capped flags too
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(flags) or 'none known'}")
    ceiling = _median([_spawn("ceiling", "none", args) for _ in range(args.repeats)])
    precision = "bf16" if "bf16_gflops" in ceiling else "fp32"
    peak = ceiling[f"{precision}_gflops"]
    shown = ", ".join(f"{k.removesuffix('_gflops')} {v:.0f}" for k, v in ceiling.items() if k.endswith("_gflops"))
    print(f"matmul peak GFLOP/s: {shown}; texttune trains in {precision} here, MFU is against {peak:.0f}")
    summary: dict[str, Any] = {"cpu": model, "flags": flags, "ceiling": ceiling, "precision": precision,
                               "repeats": args.repeats, "steps": args.steps}  # fmt: skip
    for workload in [args.only] if args.only else list(WORKLOADS):
        contenders = [c for c in CONTENDERS if c in args.contenders.split(",")]
        runs: dict[str, list] = {f"{c}{p}": [] for c in contenders for p in ("", ":eval")}
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit all alike
            for kind in runs:
                runs[kind].append(_spawn(kind, workload, args))
        medians = {kind: _median(values) for kind, values in runs.items()}
        eval_rows = args.eval_rows or WORKLOADS[workload]["eval_rows"]
        print(f"\n{workload} (batch {WORKLOADS[workload]['batch_size']}, {args.steps} timed steps, evaluation of "
              f"{eval_rows} rows, median of {args.repeats}):")  # fmt: skip
        for contender in contenders:
            train, evaluation = medians[contender], medians[f"{contender}:eval"]
            print(
                f"  {contender:8} train {train['samples_per_s']:8.2f} samples/s {train['tokens_per_s']:8.0f} tokens/s "
                f"{train['pad_share']:6.1%} pad {train['train_gflops']:6.1f} GFLOP/s MFU "
                f"{train['train_gflops'] / peak:6.1%} {train['peak_rss_mb']:6.0f} MB | eval "
                f"{evaluation['eval_samples_per_s']:8.2f} samples/s {evaluation['peak_rss_mb']:6.0f} MB"
            )
        ours = medians["texttune"]
        for baseline in [c for c in contenders if c != "texttune"]:
            train_ratio = ours["samples_per_s"] / medians[baseline]["samples_per_s"]
            eval_ratio = (
                medians["texttune:eval"]["eval_samples_per_s"] / medians[f"{baseline}:eval"]["eval_samples_per_s"]
            )
            print(f"  texttune / {baseline}: training {train_ratio:.2f}x, evaluation {eval_ratio:.2f}x samples/s")
        eval_over_train = medians["texttune:eval"]["eval_samples_per_s"] / ours["samples_per_s"]
        print(f"  texttune evaluation / training rate: {eval_over_train:.2f}x")
        summary[workload] = {"medians": medians, "eval_over_train": eval_over_train}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
