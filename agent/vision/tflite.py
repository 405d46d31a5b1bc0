"""Load a .tflite model with whichever TFLite runtime is installed.

LiteRT (`ai-edge-litert`) is the maintained successor of `tflite-runtime` with the same
`Interpreter` API; tflite-runtime 2.14 is the last release and breaks with numpy 2, so
LiteRT is tried first. TensorFlow's own interpreter is the last resort (workstation only).
LiteRT has no wheel below Python 3.10, where the package installs tflite-runtime with
NumPy 1.x (pyproject.toml); with NumPy 2 there, loading a model is a one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


# built against NumPy 1.x: with NumPy 2 its Interpreter raises "SystemError: ... returned a
# result with an error set" after printing "A module that was compiled using NumPy 1.x"
NUMPY_1_ONLY = frozenset({"tflite_runtime.interpreter"})


def interpreter_class() -> tuple[str, Any]:
    """(module name, Interpreter class) of the first runtime that imports."""
    for name in RUNTIMES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if not runtime_fits_numpy(name, np.__version__):
            raise ModelError(f"tflite-runtime was built for NumPy 1.x and cannot run with "
                             f"NumPy {np.__version__}: pip install 'numpy<2' (or use "
                             "Python 3.10+, where ai-edge-litert is installed)")
        return name, module.Interpreter
    raise ModelError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")


def runtime_fits_numpy(runtime: str, numpy_version: str) -> bool:
    """Can this runtime module run with this NumPy version?"""
    return runtime not in NUMPY_1_ONLY or int(numpy_version.split(".")[0]) < 2


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence C++ writes to fd 2 for a moment: the runtime prints `INFO: Created TensorFlow
    Lite XNNPACK delegate for CPU.` on every load, and no setting turns it off."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_interpreter(path: str | Path, num_threads: int = 1, sha256: str | None = None) -> Any:
    """An allocated interpreter for `path`; a missing or corrupt file is a ModelError.

    The model runs from a copy in memory, not from the file mapped: a bundle copied over in
    place while the agent runs (`cp`, `scp`, an export into the same folder) changed the
    scores of the running model when the runtime read the mapped file's new bytes. With
    `sha256` (model.json's), the bytes checked are the bytes run."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
        raise ModelError(f"model file {path} changed while it was loaded (it no longer "
                         "matches model.json): load it again once the copy is complete")
    _, interpreter_cls = interpreter_class()
    try:
        with native_stderr_silenced():
            interpreter = interpreter_cls(model_content=content, num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load TFLite model {path}: {first_line}") from None
    return interpreter
