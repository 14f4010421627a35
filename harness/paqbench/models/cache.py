"""A float copy of a GGUF model, saved once, so later loads skip the dequantization.

transformers dequantizes a GGUF checkpoint tensor by tensor in Python: about 30 s for the
embedded SmolLM2-135M on two CPU cores, paid by every run, every reference model and every
test that loads it. The dequantized weights are exact float32 values, so saving them once
with ``save_pretrained`` (safetensors) and loading that copy gives bit-identical weights,
tokens and logits in well under a second. The copy is keyed by the GGUF file's size and
modification time and by the transformers version that dequantized it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from paqbench.context import progress_enabled
from paqbench.models.transformers_loader import forget_gguf_quantizer, quiet_transformers

log = logging.getLogger(__name__)

CACHE_ENV = "PAQBENCH_CACHE_DIR"
READY_MARKER = "paqbench-cache-complete"


def cache_root() -> Path:
    """``PAQBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/paqbench``, else ``~/.cache/paqbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "paqbench"


def cache_key(gguf_path: Path) -> str:
    """Changes when the GGUF file or the transformers that dequantizes it changes."""
    import transformers

    stat = gguf_path.stat()
    fingerprint = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def cached_dir(gguf_path: Path) -> Path:
    return cache_root() / "models" / f"{gguf_path.stem}-{cache_key(gguf_path)}"


def float_copy_of(gguf_path: Path) -> Path | None:
    """The directory of the dequantized float32 copy of ``gguf_path``, written on first use.

    Returns None when the copy cannot be written (a read-only home, a full disk): the caller
    then loads the GGUF directly, as before. Concurrent writers each write a private temp
    directory and the first rename wins, so a reader never sees a half-written copy.
    """
    target = cached_dir(gguf_path)
    if (target / READY_MARKER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    except OSError as error:
        log.info("no model cache (%s); loading the GGUF directly", error)
        return None
    try:
        _write_float_copy(gguf_path, scratch)
        (scratch / READY_MARKER).write_text(f"{gguf_path}\n")
        os.replace(scratch, target)
    except OSError as error:
        if not (target / READY_MARKER).is_file():
            log.info("could not write the model cache at %s (%s); loading the GGUF directly", target, error)
            return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextlib.contextmanager
def _tqdm_silenced() -> Iterator[None]:
    """tqdm (>= 4.66) reads its defaults from TQDM_* variables; off unless paqbench's bars are on."""
    if progress_enabled() or "TQDM_DISABLE" in os.environ:
        yield
        return
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        del os.environ["TQDM_DISABLE"]


def _write_float_copy(gguf_path: Path, directory: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    with _tqdm_silenced():  # the GGUF conversion draws a tqdm bar of its own, outside transformers' switch
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    forget_gguf_quantizer(model)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(directory)
