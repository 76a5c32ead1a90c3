"""Build the recorded-pool slice shipped inside the package from ../shared/data.

Why: users' machines have the project, not ../shared; the quickstart must run offline on
real recorded answers. We convert RouteLLM's CSVs (Apache-2.0, lm-sys/RouteLLM commit
0b64fdaf) into one gzipped JSONL per dataset, keeping the original prompts, per-model
correctness and (GSM8K) full responses, plus GSM8K gold answers joined on question text.

Usage: python scripts/build_packaged_data.py [--src ../shared/data/routellm-evals]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
from pathlib import Path

from rl_router.pools.recorded import read_routellm_csv

OUT = Path(__file__).resolve().parents[1] / "rl_router" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared/data/routellm-evals"))
    args = ap.parse_args()
    src = Path(args.src)
    csv.field_size_limit(10**9)
    gold = {}
    with open(src / "gsm8k/test.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            gold[row["question"].strip()] = row["answer"].split("####")[-1].strip().replace(",", "")
    for name, files in {
        "gsm8k": [src / "gsm8k/gsm8k_responses.csv"],
        "mmlu": sorted((src / "mmlu").glob("mmlu_*.csv")),
    }.items():
        rows = []
        for f in files:
            topic = f.stem.removeprefix("mmlu_") if name == "mmlu" else "math"
            for rec in read_routellm_csv(f):
                rec["dataset"] = name
                rec["topic"] = topic
                if name == "gsm8k":
                    g = gold.get(rec["prompt"].strip())
                    if g is None:
                        continue
                    rec["gold"] = g
                rows.append(rec)
        with gzip.open(OUT / f"routellm_{name}.jsonl.gz", "wt", compresslevel=9) as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(rows))
    shutil.copy(src / "LICENSE", OUT / "LICENSE-routellm-evals")


if __name__ == "__main__":
    main()
