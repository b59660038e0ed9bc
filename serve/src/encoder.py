"""Triton Python-backend model `flux2_text_encoder`: prompt -> prompt embeddings.

Written by `flux2 triton --text-encoder model`. Each instance opens a flux2.Pipeline on the
folder named by the `model_dir` parameter and creates only its text-encoder session (before the
model reports ready). The pipeline models (`flux2`, `flux2_stream`) call it through BLS, so one
encoder serves every DiT instance and can run on another GPU or machine.

  inputs   prompt (BYTES [1]); optional max_sequence_length (INT32 [1], default 512)
  outputs  prompt_embeds (FP32 [1, L, ctx]): exactly what the pipeline computes for the text
           (chat template, padded to max_sequence_length tokens)

An LRU cache of prompt embeddings (`prompt_cache_mb` MB; 0: none), keyed by the model folder,
the text and max_sequence_length, sits in front of the encoder: a repeated prompt is answered
from it without running the encoder. With `response_cache` in the config (and the server
started with `--cache-config local,size=BYTES`), Triton's own response cache answers repeated
requests before they reach this model at all (its statistics count cache hits, not
executions). Custom metrics: flux2_text_encoder_runs_total, flux2_prompt_cache_hits_total,
flux2_prompt_cache_misses_total, flux2_text_encoder_seconds_total.
"""

import collections
import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

import flux2

DEFAULT_MAX_SEQUENCE_LENGTH = 512


class PromptCache:
    """An LRU map (model, text, max_sequence_length) -> embeddings, bounded in bytes."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.items = collections.OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value):
        if value.nbytes > self.max_bytes:
            return
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self.items[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self.items.popitem(last=False)
                self.bytes -= dropped.nbytes


FAMILIES = {}  # name -> MetricFamily; a family must outlive its metrics


def counter(name, description, labels):
    """A counter of Triton's custom metrics, or None where the server has metrics off."""
    try:
        if name not in FAMILIES:
            FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description,
                                                   kind=pb_utils.MetricFamily.COUNTER)
        return FAMILIES[name].Metric(labels=labels)
    except Exception:  # metrics disabled or unsupported: serve without them
        return None


def add(metric, value):
    if metric is not None and value:
        try:
            metric.increment(float(value))
        except Exception:  # a metric never fails a request
            pass


def _error(message, code_name):
    code = getattr(pb_utils.TritonError, code_name, None)
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _text(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "prompt")
    if tensor is None:
        raise ValueError("input 'prompt' is required")
    array = tensor.as_numpy()
    if array.size != 1:
        raise ValueError(f"input 'prompt': expected one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input 'prompt': not UTF-8 text ({e})") from None
    return str(value)


def _max_len(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "max_sequence_length")
    if tensor is None:
        return DEFAULT_MAX_SEQUENCE_LENGTH
    array = tensor.as_numpy()
    if array.size != 1:
        raise ValueError(f"input 'max_sequence_length': expected one value, got shape {list(array.shape)}")
    n = int(array.reshape(-1)[0])
    if n < 1:
        raise ValueError(f"input '--max-sequence-length': {n}: the maximum prompt sequence length must be at least 1 token")
    return n


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = params.get("model_dir", "")
        if not model_dir:
            raise pb_utils.TritonModelException("flux2_text_encoder: parameter 'model_dir' is missing")
        self.model_dir = os.path.realpath(os.path.join(args["model_repository"], model_dir))
        threads = int(params["threads"]) if params.get("threads") else None
        provider = params.get("provider", "cpu")
        gpu = args.get("model_instance_kind") == "GPU"
        device = int(args.get("model_instance_device_id") or 0) if gpu else 0
        self.pipe = flux2.Pipeline(self.model_dir, provider=provider, threads=threads, device_id=device)
        seconds = self.pipe.load(["text_encoder"])
        self.cache = PromptCache(int(float(params.get("prompt_cache_mb") or 0) * 2**20))
        labels = {"model": config.get("name", "flux2_text_encoder")}
        self.m_runs = counter("flux2_text_encoder_runs_total", "Prompts run through the text encoder", labels)
        self.m_hits = counter("flux2_prompt_cache_hits_total", "Prompts answered from the embedding cache", labels)
        self.m_misses = counter("flux2_prompt_cache_misses_total", "Prompts not in the embedding cache", labels)
        self.m_seconds = counter("flux2_text_encoder_seconds_total", "Seconds spent in the text encoder", labels)
        pb_utils.Logger.log_info(f"flux2_text_encoder: {self.model_dir} ready, session in {seconds:.2f}s")

    def embeddings(self, text, max_len):
        key = (self.model_dir, text, max_len)
        cached = self.cache.get(key)
        if cached is not None:
            add(self.m_hits, 1)
            return cached
        add(self.m_misses, 1)
        t = time.perf_counter()
        embeds = self.pipe.encode([text], max_sequence_length=max_len)
        add(self.m_seconds, time.perf_counter() - t)
        add(self.m_runs, 1)
        self.cache.put(key, embeds)
        return embeds

    def _answer(self, request):
        try:
            embeds = self.embeddings(_text(request), _max_len(request))
        except ValueError as e:
            return _error(str(e), "INVALID_ARG")
        except Exception as e:  # a fault of this request: answer it, keep serving
            return _error(f"flux2_text_encoder: {e}", "INTERNAL")
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("prompt_embeds", embeds)])

    def execute(self, requests):
        return [self._answer(r) for r in requests]

    def finalize(self):
        self.pipe = None
