"""FLUX.2 image generation from Python, on the flux2-deploy runtime (ONNX Runtime / TensorRT).

    import flux2
    pipe = flux2.Pipeline("klein-onnx")                   # a `flux2 export` folder
    image = pipe.generate("a red fox in snow", seed=7)    # numpy uint8 [H, W, 3]
    images = pipe.generate("a red fox", seed=7, num_images=4)  # one batch: seeds 7..10, a list
    pipe.last_timings                                     # seconds per stage

The pixels are exactly those `flux2 generate` writes to its PNG for the same arguments.
Inference runs with the GIL released. Wrong arguments raise ValueError with the CLI's
message; faults while running raise RuntimeError; a run stopped by its `progress` callback
raises flux2.CancelledError.

ONNX Runtime is loaded once per process, by absolute path, from (first found):
ORT_DYLIB_PATH; the `onnxruntime` wheel installed beside this package (its
libonnxruntime.so.1.31.1, the same file the wheel ships, so `import onnxruntime` in the same
process is fine); a `.venv` made by flux2-deploy's scripts/setup.sh above the working directory.
"""

import importlib.util
import os

from . import _flux2
from ._flux2 import CancelledError, Pipeline, __version__, export, ort_library, schedule

__all__ = ["Pipeline", "CancelledError", "export", "schedule", "ort_library", "__version__"]

_ORT_LIB = "libonnxruntime.so.1.31.1"


def _onnxruntime_wheel_library():
    """The library file of an installed `onnxruntime` wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "capi", _ORT_LIB)
        if os.path.isfile(path):
            return path
    return None


def _choose_ort_library():
    path = os.environ.get("ORT_DYLIB_PATH") or _onnxruntime_wheel_library()
    if path:
        # absolute: a relative path would resolve against the executable (python, Triton's stub)
        _flux2._use_ort_library(os.path.abspath(path))


_choose_ort_library()
