"""Hand-made runs shaped like report.json's, for the report tests: a baseline, two pruned
runs (masks, per-layer records), a 4-bit run, an identical copy of the baseline, and a
failed run; latency with raw samples and paired speedups, accuracy, samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paqbench.report.model import Report
from paqbench.runner.result import PhaseRecord, RunResult
from paqbench.runner.store import ResultStore

MIB = 1 << 20
#: Repeated decode timings of one model on a loaded machine (s/token): wide spread.
TPOT = [0.0336, 0.0296, 0.0378, 0.0293, 0.0364, 0.0331, 0.0350]


def m(metric: str, name: str, value: float | None, unit: str = "", better: str | None = "lower",
      **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "name": name, "value": value, "unit": unit, "better": better, **extra}


def timing(name: str, samples: list[float], unit: str, better: str, **details: Any) -> dict[str, Any]:
    ordered = sorted(samples)
    middle = ordered[len(ordered) // 2]
    spread = {"median": middle, "p90": ordered[-1], "min": ordered[0], "max": ordered[-1], "stdev": 0.001}
    return m("latency", name, middle, unit, better, spread=spread, samples=list(samples), details=details)


def layers(kind: str, sparsity: float, bits: float) -> dict[str, Any]:
    return {f"model.layers.{i}.mlp.{p}": {"kind": kind, "shape": [64, 128], "sparsity": sparsity, "bits": bits}
            for i in range(2) for p in ("up_proj", "down_proj")}


def measurements(ppl: float, acc: float, ckpt: float, tpot: list[float], speedups: list[float], weights: float,
                 kind: str = "dense", sparsity: float = 0.0, bits: float = 16.0,
                 texts: tuple[str, ...] = ("a sea of text", "tea")) -> list[dict[str, Any]]:
    return [
        m("params", "total", 134.5e6, "params", None),
        m("params", "nonzero", 134.5e6 * (1 - sparsity * 0.7), "params"),
        m("params", "linear_sparsity", sparsity, "fraction", None,
          details={"per_module": layers(kind, sparsity, bits)}),
        m("params", "bits_per_weight", bits, "bits"),
        m("storage", "checkpoint", ckpt, "bytes", details={"dtype": "model"}),
        m("storage", "bits_per_weight", bits + 0.01, "bits"),
        m("perplexity", "embedded", ppl, "ppl", spread={"stderr": ppl * 0.05}, samples=[2.9, 3.1],
          details={"windows": 4}),
        m("race", "high/acc", acc, "fraction", "higher", spread={"stderr": 0.05}, samples=[1, 0, 1, 0],
          details={"subset": "high", "split": "test", "documents": 20, "total_documents": 1045}),
        timing("tpot", tpot, "s/token", "lower"),
        timing("decode_tokens_per_s", [1 / t for t in tpot], "tokens/s", "higher"),
        timing("decode_speedup", speedups, "×", "higher", reference="the uncompressed model, in alternation"),
        m("memory", "weights", weights, "bytes"),
        m("memory", "peak_allocated", None, "bytes", unavailable="no CUDA device (the model runs on cpu)"),
        m("samples", "generated_tokens", 4.0, "tokens", None, details={
            "max_new_tokens": 8, "chat": False, "chat_template": False,
            "outputs": [{"prompt": p, "text": t, "new_tokens": 4}
                        for p, t in zip(("The water cycle is", "Say <b>hi</b>"), texts, strict=True)]}),
    ]


def run(name: str, pipeline: str, found: list[dict[str, Any]], status: str = "ok", sweep=None,
        error=None) -> dict[str, Any]:
    return {"id": f"id-{name}", "name": name, "pipeline": pipeline, "sweep": sweep or {}, "status": status,
            "error": error, "model": {"source": "smollm2-135m", "dtype": "bfloat16", "device": "cpu"},
            "load": {"name": "load", "wall_s": 1.5, "memory": {"rss_bytes": 400 * MIB}, "params": None,
                     "info": {"source": "embedded", "dtype": "torch.bfloat16", "device": "cpu"}, "error": None},
            "steps": [], "planned_steps": [], "search": None,
            "metrics": [{"name": n, "wall_s": 0.5, "memory": {}, "params": {}, "info": None, "error": None}
                        for n in dict.fromkeys(x["metric"] for x in found)],
            "measurements": found, "seed": 0, "limit": None, "started_at": "2026-12-03T08:00:00+00:00",
            "finished_at": "2026-12-03T08:01:00+00:00", "wall_s": 60.0}


def runs() -> list[dict[str, Any]]:
    slow = [t * 1.6 for t in TPOT]
    return [
        run("baseline", "baseline", measurements(20.0, 0.40, 269 * MIB, TPOT, [0.97, 1.02, 1.01, 0.99, 1.04],
                                                 269 * MIB)),
        run("same-as-baseline", "copy", measurements(20.0, 0.40, 269 * MIB, list(reversed(TPOT)),
                                                     [1.03, 0.98, 0.96, 1.02, 1.01], 269 * MIB)),
        run("magnitude[sparsity=0.5]", "magnitude", measurements(
            600.0, 0.30, 269 * MIB, [t * 1.02 for t in TPOT], [0.95, 1.05, 1.0, 0.98, 1.03], 320 * MIB,
            kind="pruned", sparsity=0.5), sweep={"sparsity": 0.5}),
        run("rtn4 <b>&", "rtn4", measurements(23.0, 0.38, 77 * MIB, slow, [0.61, 0.64, 0.6, 0.63, 0.62], 80 * MIB,
                                              kind="quantized", bits=4.25, texts=("x | y ```", ""))),
        run("broken", "broken", [], status="failed",
            error={"message": "step 1 (magnitude) failed: boom <i>", "traceback": "Traceback: boom"}),
    ]


def report(found: list[dict[str, Any]] | None = None, description: str = "") -> Report:
    suite = {"model": {"source": "meta-llama/Llama-3.2-3B", "device": "cuda"}, "description": description}
    return Report(suite_name="unit <suite>", suite=suite, runs=found if found is not None else runs(),
                  environment={"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_threads": 2, "torch_threads": 2,
                               "ram_bytes": 8 << 30, "gpus": [], "python": "3.11.7", "platform": "Linux",
                               "libraries": {"torch": "2.13.0", "transformers": "5.23.0", "lm_eval": "0.4.13"},
                               "git_sha": "abc123", "env": {"PAQBENCH_PROGRESS": "0"}},
                  generated_at="2026-12-03T08:30:00+00:00")


def results_dir(directory: Path) -> Path:
    """A results directory (suite.json + results.jsonl) holding :func:`runs`, for
    ``paqbench report``."""
    store = ResultStore(directory)
    directory.mkdir(parents=True, exist_ok=True)
    found = runs()
    store.write_manifest({"suite_name": "unit", "resolved_suite": {"model": {"source": "smollm2-135m"},
                                                                   "reporters": ["json", "markdown", "html"]},
                          "plan": [{"id": r["id"], "name": r["name"], "pipeline": r["pipeline"]} for r in found],
                          "searches": []})
    for r in found:
        load = PhaseRecord(**r["load"])
        metrics = [PhaseRecord(**p) for p in r["metrics"]]
        spec = {"model": r["model"], "steps": [], "seed": 0, "limit": None}
        store.append(RunResult(id=r["id"], name=r["name"], pipeline=r["pipeline"], status=r["status"], spec=spec,
                               suite="unit", sweep=r["sweep"], error=r["error"], load=load, metrics=metrics,
                               measurements=r["measurements"], started_at=r["started_at"],
                               finished_at=r["finished_at"], wall_s=r["wall_s"],
                               environment=report().environment))
    return directory
