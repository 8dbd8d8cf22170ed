"""The ledger alone: its CPU and thread switches per conversion, without HTTP or mapping.

One process per run, on a fresh SQLite ledger in a temporary directory, does what the delivery
engine asks of the ledger at concurrency 32: claims in chunks of 64 keys (with the metadata a
conversion carries), then one ``fence`` per tick that marks ``--per-tick`` keys *sending* and
records the answers of as many postbacks before them (*delivered*), as the dispatcher's group
commit does. It prints the process's CPU (user and system) and voluntary thread switches per
key. ``--baseline REF`` runs a git ref's tree beside this checkout, interleaved, and prints the
medians side by side::

    python bench/ledger_alone.py --keys 20000 --repeats 5 --baseline HEAD~1

The CPU figures of whole runs (``make bench``'s ledger cost) are what the goals use; this one
says how much of them the ledger itself takes, and moves far less with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
CHUNK = 64
"""Keys per claim: the engine's claim chunk at concurrency 32."""


def one_run(keys_count: int, per_tick: int) -> dict[str, float]:
    """In this process: claim, fence and mark ``keys_count`` keys; the costs per key."""
    from target_everflow.ledger import open_ledger

    with tempfile.TemporaryDirectory(prefix="ledger-alone-") as tmp:
        ledger = open_ledger(None, default_dir=pathlib.Path(tmp), lease_seconds=300,
                             retention_days=30)  # fmt: skip
        keys = [f"m:{i:08d}-{os.urandom(8).hex()}" for i in range(keys_count)]
        metadata = {
            k: {"stream": "orders", "event": "Order Completed", "transaction_id": k[11:],
                "message_id": k[2:], "adv_event_id": 7, "order_id": f"ORD-{k[2:10]}",
                "amount": 12.5, "event_time": 1.7e9, "currency": "USD"}
            for k in keys
        }  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        answered: list[str] = []
        for c in range(0, keys_count, CHUNK):
            chunk = keys[c : c + CHUNK]
            ledger.claim(chunk, {k: metadata[k] for k in chunk})
            for i in range(0, len(chunk), per_tick):
                take = chunk[i : i + per_tick]
                fenced = ledger.fence(take, [(k, 200) for k in answered])
                if fenced != set(take):
                    raise SystemExit(f"fence lost claims: {sorted(set(take) - fenced)}")
                answered = take
        ledger.fence((), [(k, 200) for k in answered])
        ledger.flush()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        ledger.close()
    per_key = 1e6 / keys_count
    return {
        "user_us": (after.ru_utime - before.ru_utime) * per_key,
        "system_us": (after.ru_stime - before.ru_stime) * per_key,
        "wall_us": wall * per_key,
        "switches": (after.ru_nvcsw - before.ru_nvcsw) / keys_count,
    }


def run_tree(tree: pathlib.Path, keys_count: int, per_tick: int) -> dict[str, float]:
    """One run in a child process importing ``target_everflow`` from ``tree``."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--keys", str(keys_count),
         "--per-tick", str(per_tick)],
        env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000, help="keys per run (20000)")
    parser.add_argument("--per-tick", type=int, default=6, help="keys fenced per commit (6)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each tree (5)")
    parser.add_argument("--baseline", help="a git ref run beside this checkout, interleaved")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, value in (("--keys", args.keys), ("--per-tick", args.per_tick),
                        ("--repeats", args.repeats)):  # fmt: skip
        if not 1 <= value <= 10_000_000:
            parser.error(f"{name} must be between 1 and 10000000")
    if args.child:
        print(json.dumps(one_run(args.keys, args.per_tick)))
        return
    trees = [("now", REPO)]
    with tempfile.TemporaryDirectory(prefix="ledger-alone-trees-") as tmp:
        if args.baseline:
            sys.path.insert(0, str(BENCH))
            from run import baseline_tree

            base = baseline_tree(pathlib.Path(tmp), args.baseline)
            if base is None:
                parser.error(f"cannot unpack {args.baseline!r} (is this a git checkout?)")
            trees.append((args.baseline, base))
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
        for _ in range(args.repeats):
            for name, tree in trees:
                results[name].append(run_tree(tree, args.keys, args.per_tick))
    print(f"{args.keys:,} keys, claims of {CHUNK}, {args.per_tick} fenced per commit; "
          f"medians of {args.repeats} runs")  # fmt: skip
    print(f"{'tree':<12} {'CPU µs/key':>11} {'user':>7} {'system':>7} {'switches/key':>13}")
    for name, runs in results.items():
        user = statistics.median(r["user_us"] for r in runs)
        system = statistics.median(r["system_us"] for r in runs)
        cpu = statistics.median(r["user_us"] + r["system_us"] for r in runs)
        switches = statistics.median(r["switches"] for r in runs)
        print(f"{name:<12} {cpu:>11.1f} {user:>7.1f} {system:>7.1f} {switches:>13.2f}")


if __name__ == "__main__":
    main()
