"""Benchmark: the data module converting + validating 100k generated rows in each format, and writing them.

python benchmarks/data_throughput.py [--n 100000]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))

from make_synthetic import generate  # noqa: E402

from workshop_lib import data  # noqa: E402


def as_sharegpt(r):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in r["messages"]]}


def as_alpaca(r):
    user = next(m["content"] for m in r["messages"] if m["role"] == "user")
    answer = next(m["content"] for m in r["messages"] if m["role"] == "assistant")
    return {"instruction": user, "input": "", "output": answer}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    rows, _ = generate(args.n, 0, seed=7, unique=False)
    with tempfile.TemporaryDirectory() as tmp:
        for name, convert in [("messages", lambda r: r), ("sharegpt", as_sharegpt), ("alpaca", as_alpaca)]:
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text("".join(json.dumps(convert(r), ensure_ascii=False) + "\n" for r in rows))
            t = time.perf_counter()
            out, report = data.load_conversations(path)
            t_load = time.perf_counter() - t
            t = time.perf_counter()
            data.write_jsonl(out, Path(tmp) / f"{name}.out.jsonl")
            t_write = time.perf_counter() - t
            assert report.kept == args.n, report.summary()
            print(
                f"{name:9} {args.n} rows: load+convert+validate {args.n / t_load:9,.0f} rows/s ({t_load:.2f} s), "
                f"write {args.n / t_write:9,.0f} rows/s ({t_write:.2f} s)"
            )


if __name__ == "__main__":
    main()
