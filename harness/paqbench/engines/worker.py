"""Child process of the llama.cpp memory measurement: read a job (JSON on stdin), load the
GGUF, generate greedily, print one JSON line: its own peak RSS, and the RSS before the
load (what Python and llama-cpp-python cost without a model).

Run as a script (``python worker.py``), never imported from paqbench: importing paqbench
would load torch into the child and count its hundreds of MB as llama.cpp's.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import psutil


def main() -> None:
    job = json.loads(sys.stdin.read())
    import llama_cpp

    before = psutil.Process().memory_info().rss
    prompt, new_tokens, threads = job["prompt_ids"], job["new_tokens"], job["threads"]
    n_ctx = len(prompt) + new_tokens
    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()
    llm.eval(list(prompt))
    for _ in range(new_tokens - 1):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        llm.eval([int(row.argmax())])
    llm.close()
    print(json.dumps({"hwm_rss": high_water_rss(), "rss_before_load": before,
                      "llama_cpp_version": llama_cpp.__version__, "threads": threads}))


def high_water_rss() -> int | None:
    """This process image's peak RSS (Linux ``VmHWM``), or None where there is none.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the parent's high-water mark across
    ``fork``/``vfork`` + ``exec`` into it, so a child of a 4 GB process reports 4 GB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
