"""Which timm model families can contsup analyse?

For each timm module (family), takes its first registered model, builds it on the
meta device and runs the full analysis (trace in both modes, meta-device costs,
cut candidates) at its default input size. Prints one line per family and a
summary; writes benchmarks/results/trace_coverage.json.

    python benchmarks/trace_coverage.py
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import timm
import torch

import contsup  # noqa: F401
import partitioner

RESULTS = Path(__file__).parent / "results"


def first_model(module: str) -> str | None:
    names = timm.list_models(module=module)
    return names[0] if names else None


def check(name: str) -> dict:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.device("meta"):
                    model = timm.create_model(name)
            except Exception:
                model = timm.create_model(name)
        # Batch 2: batch norm refuses to train on one value per channel.
        x = torch.empty(2, *model.pretrained_cfg["input_size"])
        analysis = partitioner.analyze(model, x)
        return {
            "model": name,
            "ok": True,
            "max_k": analysis.max_k,
            "seconds": time.perf_counter() - start,
        }
    except Exception as error:  # noqa: BLE001  (a survey: record every failure)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return {
            "model": name,
            "ok": False,
            "error": f"{type(error).__name__}: {message}"[:300],
            "seconds": time.perf_counter() - start,
        }


def main() -> None:
    rows = []
    for module in sorted(timm.list_modules()):
        name = first_model(module)
        if name is None:
            continue
        row = {"family": module, **check(name)}
        rows.append(row)
        status = f"max_k={row['max_k']}" if row["ok"] else row["error"]
        print(f"{module:24s} {name:40s} {status}", flush=True)
    ok = sum(r["ok"] for r in rows)
    print(f"{ok} of {len(rows)} families analysed")
    RESULTS.mkdir(exist_ok=True)
    summary = {
        "timm": timm.__version__,
        "torch": torch.__version__,
        "ok": ok,
        "families": len(rows),
        "rows": rows,
    }
    (RESULTS / "trace_coverage.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
