"""Load on `texttune serve`: a closed loop of one-sentence requests at several concurrencies, on loopback.

The server runs as `texttune serve` in its own process, the client (asyncio + httpx, `--concurrency` workers each
sending its next request when the last is answered) in this one; where the machine has the cores, each gets its own
(`taskset`): on 2 cores, the server one core and one inference thread, the client the other. For each concurrency,
for --seconds: p50/p95/p99 latency of the answered requests, answered requests/s, counts by status. Sentences are
SST-5 dev phrases, in turn.

    python bench/serve_load.py texttune-runs/sst5 --seconds 60
    python bench/serve_load.py texttune-runs/sst5 --seconds 20 --concurrency 128 --queue 32   # past capacity
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from texttune.data import read_table
from texttune.export import cpu_description

SST5_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst5_dev.tsv"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def closed_loop(url: str, texts: list[str], concurrency: int, seconds: float) -> tuple[list[float], dict]:
    """`concurrency` workers, each sending its next request when the last is answered. Every 8 workers share one
    httpx client: one pool of 128 connections costs the client more CPU than the server spends (measured)."""
    latencies, statuses = [], collections.Counter()
    stop = time.perf_counter() + seconds
    clients = [httpx.AsyncClient(timeout=30) for _ in range(-(-concurrency // 8))]

    async def worker(offset: int) -> None:
        client, i = clients[offset // 8], offset
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                response = await client.post(url, json={"texts": [texts[i % len(texts)]]})
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status_code == 429:
                    await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 0.05))
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1
            i += concurrency

    try:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    return latencies, dict(statuses)


def server_totals(url: str) -> dict[str, float]:
    """The server's own counters: seconds spent in /predict and requests, texts and model runs."""
    wanted = ("texttune_request_seconds_sum", "texttune_request_seconds_count", "texttune_batch_texts_sum",
              "texttune_batch_texts_count")  # fmt: skip
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return {name: float(line.split()[-1]) for line in lines for name in wanted if line.startswith(name + " ")}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="bundle, cv run or models:/ version to serve")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--queue", type=int, default=256, help="the server's --queue (texts waiting or running)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {cores} cores; flags: {' '.join(cpu['flags'])}")
    server_cpus, client_cpus = (f"0-{cores - 2}", str(cores - 1)) if cores > 1 else ("0", "0")
    threads = max(1, cores - 1)
    port = free_port()
    command = [str(Path(sys.executable).with_name("texttune")), "-q", "serve", args.model, "--port", str(port),
               "--engine", args.engine, "--threads", str(threads), "--queue", str(args.queue),
               "--max-texts", str(min(64, args.queue))]  # fmt: skip
    if cores > 1:
        command = ["taskset", "-c", server_cpus, *command]
        os.sched_setaffinity(0, {int(client_cpus)})
    print(f"server on cpus {server_cpus} ({threads} inference threads), client on cpu {client_cpus}")
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        print(f"engine: {httpx.get(f'{url}/info').json()['engine']}")
        texts = read_table(SST5_DEV)["Phrase"].tolist()
        print(f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'server ms':>9} "
              f"{'texts/run':>9}  statuses")  # fmt: skip
        rates = {}
        for concurrency in args.concurrency:
            before = server_totals(url)
            latencies, statuses = asyncio.run(closed_loop(f"{url}/predict", texts, concurrency, args.seconds))
            after = {name: value - before.get(name, 0.0) for name, value in server_totals(url).items()}
            server_ms = 1000 * after["texttune_request_seconds_sum"] / max(after["texttune_request_seconds_count"], 1)
            per_run = after["texttune_batch_texts_sum"] / max(after["texttune_batch_texts_count"], 1)
            rates[concurrency] = len(latencies) / args.seconds
            p50, p95, p99 = (1000 * percentile(latencies, q) for q in (50, 95, 99))
            print(f"{concurrency:>11} {rates[concurrency]:8.1f} {p50:8.1f} {p95:8.1f} {p99:8.1f} {server_ms:9.1f} "
                  f"{per_run:9.1f}  {statuses}")  # fmt: skip
        if 1 in rates:
            for concurrency, rate in rates.items():
                print(f"throughput at {concurrency}: {rate / rates[1]:.2f}x the throughput at 1")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
