"""Triton Python-backend model `flux2`: the whole FLUX.2 pipeline through the `flux2` package.

Written by `flux2 triton`. Each instance (one stub process) opens one flux2.Pipeline on the
folder named by the `model_dir` parameter (relative paths are relative to this model's
directory) and answers one request at a time:

  inputs   prompt (BYTES [1]); optional seed (INT64 [1]), steps/width/height (INT32 [1]),
           guidance (FP32 [1]), negative_prompt (BYTES [1]), references (BYTES [-1], encoded
           PNG/JPEG images), num_images (INT32 [1], default 1)
  outputs  image (UINT8 [H, W, 3]), the pixels `flux2 generate` writes for the same arguments
           (the first image); images (UINT8 [N, H, W, 3]), the num_images images of seeds
           seed, seed+1, ... made as one pipeline batch (`flux2 generate --num-images N`),
           each equal to a one-image request with its seed. Only the requested outputs are
           filled (both when the request names none).

A request the pipeline refuses gets a Triton error with flux2's message (INVALID_ARG) and the
model keeps serving; a request cancelled by the client stops at the next sampling step.
The `flux2` package and numpy must be importable by the stub's Python (PYTHONPATH, or
EXECUTION_ENV_PATH with a packed environment).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import flux2

SCALARS = {  # input -> (generate() keyword, Python type)
    "seed": ("seed", int),
    "steps": ("steps", int),
    "width": ("width", int),
    "height": ("height", int),
    "guidance": ("guidance", float),
    "num_images": ("num_images", int),
}


def _error(message, code_name):
    code = getattr(pb_utils.TritonError, code_name, None)
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _text(value, name):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input '{name}': not UTF-8 text ({e})") from None
    return str(value)


def _one(request, name):
    """The single element of input `name`, or None when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise ValueError(f"input '{name}': expected one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def request_kwargs(request):
    """generate() arguments of a request; ValueError naming the input at fault."""
    prompt = _one(request, "prompt")
    if prompt is None:
        raise ValueError("input 'prompt' is required")
    kwargs = {"prompt": _text(prompt, "prompt")}
    negative = _one(request, "negative_prompt")
    if negative is not None:
        kwargs["negative_prompt"] = _text(negative, "negative_prompt")
    for name, (key, kind) in SCALARS.items():
        value = _one(request, name)
        if value is not None:
            kwargs[key] = kind(value)
    refs = pb_utils.get_input_tensor_by_name(request, "references")
    if refs is not None:
        items = refs.as_numpy().reshape(-1)
        kwargs["references"] = [bytes(r) if not isinstance(r, bytes) else r for r in items]
    return kwargs


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        here = args["model_repository"]  # this model's folder
        model_dir = params.get("model_dir", "")
        if not model_dir:
            raise pb_utils.TritonModelException("flux2: parameter 'model_dir' is missing")
        model_dir = os.path.normpath(os.path.join(here, model_dir))
        threads = int(params["threads"]) if params.get("threads") else None
        provider = params.get("provider", "cpu")
        device = int(args.get("model_instance_device_id") or 0) if args.get("model_instance_kind") == "GPU" else 0
        self.pipe = flux2.Pipeline(model_dir, provider=provider, threads=threads, device_id=device)
        self.logger = pb_utils.Logger
        self.logger.log_info(f"flux2: {self.pipe!r} loaded ({self.pipe.variant}), ONNX Runtime {flux2.ort_library()}")

    def _generate(self, request):
        try:
            kwargs = request_kwargs(request)
        except ValueError as e:
            return _error(str(e), "INVALID_ARG")

        def progress(stage, step, total):
            return not request.is_cancelled()

        try:
            result = self.pipe.generate(progress=progress, **kwargs)
        except flux2.CancelledError as e:
            self.logger.log_info(f"flux2: request {request.request_id()!r} {e}")
            return _error(f"flux2: {e}", "CANCELLED")
        except ValueError as e:
            return _error(str(e), "INVALID_ARG")
        except Exception as e:  # a fault of this request: answer it, keep serving
            return _error(f"flux2: {e}", "INTERNAL")
        images = result if isinstance(result, list) else [result]
        wanted = set(request.requested_output_names()) or {"image", "images"}
        outputs = []
        if "image" in wanted:
            outputs.append(pb_utils.Tensor("image", np.ascontiguousarray(images[0])))
        if "images" in wanted:
            outputs.append(pb_utils.Tensor("images", np.stack(images)))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def execute(self, requests):
        return [self._generate(r) for r in requests]

    def finalize(self):
        self.pipe = None
