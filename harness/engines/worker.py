"""Child process of the llama.cpp memory measurement: read a job (JSON on stdin), load the
GGUF, generate greedily, print one JSON line: its own peak RSS, and the RSS before the
load (what Python and llama-cpp-python cost without a model).

Run as a script (``python worker.py``), never imported from paqbench: importing paqbench
would load torch into the child and count its hundreds of MB as llama.cpp's.
"""

from __future__ import annotations

import json
import resource
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
    # ru_maxrss is in KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"ru_maxrss": peak, "rss_before_load": before, "llama_cpp_version": llama_cpp.__version__,
                      "threads": threads}))


if __name__ == "__main__":
    main()
