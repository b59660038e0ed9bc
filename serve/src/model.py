"""Triton Python-backend models `flux2` and `flux2_stream`: the whole FLUX.2 pipeline through the
`flux2` package.

Written by `flux2 triton`. Each instance (one stub process) opens one flux2.Pipeline on the
folder named by the `model_dir` parameter (relative paths are relative to this model's
directory) and creates its sessions (and, with the `warmup` parameter, runs one sampling step)
before the model reports ready.

  inputs   prompt (BYTES [1]); optional seed (INT64 [1]), steps/width/height (INT32 [1]),
           guidance (FP32 [1]), negative_prompt (BYTES [1]), references (BYTES [-1], encoded
           PNG/JPEG images), num_images (INT32 [1], default 1), cache (BYTES [1]: step caching,
           "fbc:0.1", "mag:0.1,3,0.2", "taylor:2", "tea:0.1" or "off", as `flux2 generate
           --cache`; default: the `step_cache` parameter, from `flux2 triton --cache`)
  outputs  image (UINT8 [H, W, 3]), the pixels `flux2 generate` writes for the same arguments
           (the first image); images (UINT8 [N, H, W, 3]), the num_images images of seeds
           seed, seed+1, ... made as one pipeline batch. Only the requested outputs are filled
           (both when the request names none).

Dynamic batching (`max_batch_size` > 0): every tensor carries Triton's leading batch dimension
of 1 (one request, one item). Requests of one execution that agree on everything but prompt,
negative prompt and seed (size, steps, guidance, and whatever else the request sets), with no
references and no num_images, run as ONE pipeline batch: each prompt's embeddings and each seed
go to their own batch row, so every image equals the request served alone, bit for bit; the
others run in turn.

Text encoder (`text_encoder` parameter): `local` (this instance's own, embeddings cached per
instance: LRU, `prompt_cache_mb`), the name of the `flux2_text_encoder` model (called through
BLS; it keeps the cache shared by every instance), or `grpc://HOST:PORT` for that model on
another server (tritonclient).

Streaming (`flux2_stream`, decoupled): one response per sampling step (step, total, seconds
since the request started) and then the image with the final flag. A cancelled request (the
client cancels the call or closes the gRPC stream) stops at the next sampling step.

A request the pipeline refuses gets a Triton error with flux2's message (INVALID_ARG) and the
model keeps serving. Custom metrics (pb_utils.MetricFamily): flux2_stage_seconds_total{stage},
flux2_dit_evaluations_total, flux2_images_total, flux2_requests_total,
flux2_batch_wait_seconds_total (time in this model before a request's group started),
flux2_prompt_cache_hits_total / _misses_total (embedding cache of this instance).
The `flux2` package and numpy must be importable by the stub's Python (PYTHONPATH, or
EXECUTION_ENV_PATH with a packed environment).
"""

import json
import os
import time

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
DEFAULT_MAX_SEQUENCE_LENGTH = 512
STAGES = ("text_encoder", "vae_encode", "denoise", "vae_decode")


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
        raise ValueError(f"input '{name}': expected one value, got shape {list(array.shape)} "
                         "(one request makes one item; num_images asks for several images)")
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
    cache = _one(request, "cache")
    if cache is not None:
        kwargs["cache"] = _text(cache, "cache").strip() or "off"
    refs = pb_utils.get_input_tensor_by_name(request, "references")
    if refs is not None:
        items = refs.as_numpy().reshape(-1)
        kwargs["references"] = [bytes(r) if not isinstance(r, bytes) else r for r in items]
    return kwargs


def batch_key(kwargs):
    """What requests must share to run as one pipeline batch (None: this one runs alone)."""
    if "references" in kwargs or "num_images" in kwargs:
        return None
    return tuple(sorted((k, v) for k, v in kwargs.items() if k not in ("prompt", "negative_prompt", "seed")))


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


class Metrics:
    def __init__(self, model):
        labels = {"model": model}
        self.stage = {s: counter("flux2_stage_seconds_total", "Seconds per pipeline stage", dict(labels, stage=s))
                      for s in STAGES + ("prompt_embeds",)}
        self.dit = counter("flux2_dit_evaluations_total", "DiT evaluations (one per sampling step of a pipeline batch)", labels)
        self.images = counter("flux2_images_total", "Images made", labels)
        self.requests = counter("flux2_requests_total", "Requests answered", labels)
        self.wait = counter("flux2_batch_wait_seconds_total", "Seconds requests waited in the model for their batch", labels)
        self.hits = counter("flux2_prompt_cache_hits_total", "Prompt embeddings found in the cache", labels)
        self.misses = counter("flux2_prompt_cache_misses_total", "Prompt embeddings not in the cache", labels)
        self.step_cache = counter("flux2_step_cache_hits_total", "Sampling steps answered by the step cache", labels)

    def run(self, timings, images):
        for s in STAGES:
            add(self.stage[s], timings.get(s))
        add(self.dit, len(timings.get("dit_steps", [])))
        add(self.step_cache, timings.get("cache_hits"))
        add(self.images, images)


class Embeddings:
    """Prompt embeddings from this instance's pipeline or the flux2_text_encoder model (BLS),
    behind an LRU cache (the encoder model keeps its own cache, shared by every instance)."""

    def __init__(self, pipe, source, model_dir, cache_mb, metrics):
        self.pipe, self.source, self.model_dir, self.metrics = pipe, source, model_dir, metrics
        self.cache = {}
        self.max_bytes, self.bytes = int(cache_mb * 2**20), 0

    def _encode(self, text):
        if self.source == "local":
            return self.pipe.encode([text], max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH)
        if self.source.startswith("grpc://"):
            return self._remote(text)
        request = pb_utils.InferenceRequest(
            model_name=self.source, requested_output_names=["prompt_embeds"],
            inputs=[pb_utils.Tensor("prompt", np.array([text.encode("utf-8")], dtype=np.object_))])
        response = request.exec()
        if response.has_error():
            raise ValueError(response.error().message())
        return pb_utils.get_output_tensor_by_name(response, "prompt_embeds").as_numpy()

    def _remote(self, text):
        """flux2_text_encoder on another server (gRPC; tritonclient in the backend's Python)."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if getattr(self, "client", None) is None:
            self.client = grpcclient.InferenceServerClient(self.source[len("grpc://"):])
        prompt = grpcclient.InferInput("prompt", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=np.object_))
        try:
            result = self.client.infer("flux2_text_encoder", [prompt], client_timeout=600)
        except InferenceServerException as e:
            raise ValueError(f"text encoder at {self.source}: {e.message()}") from None
        return result.as_numpy("prompt_embeds")

    def get(self, text):
        key = (self.model_dir, text, DEFAULT_MAX_SEQUENCE_LENGTH)
        if key in self.cache:
            add(self.metrics.hits, 1)
            value = self.cache.pop(key)
            self.cache[key] = value  # most recently used last
            return value
        add(self.metrics.misses, 1)
        value = self._encode(text)
        if self.source == "local" and value.nbytes <= self.max_bytes:  # the encoder model caches its own
            self.cache[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self.cache.pop(next(iter(self.cache))).nbytes
        return value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = params.get("model_dir", "")
        if not model_dir:
            raise pb_utils.TritonModelException("flux2: parameter 'model_dir' is missing")
        model_dir = os.path.realpath(os.path.join(args["model_repository"], model_dir))
        threads = int(params["threads"]) if params.get("threads") else None
        provider = params.get("provider", "cpu")
        gpu = args.get("model_instance_kind") == "GPU"
        device = int(args.get("model_instance_device_id") or 0) if gpu else 0
        self.name = config.get("name", "flux2")
        self.step_cache = params.get("step_cache") or "off"
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        self.logger = pb_utils.Logger
        self.pipe = flux2.Pipeline(model_dir, provider=provider, threads=threads, device_id=device)
        source = params.get("text_encoder") or "local"
        with open(os.path.join(model_dir, "manifest.json")) as f:
            graphs = set(json.load(f).get("graphs", {}))
        wanted = ["transformer", "vae_decoder", "vae_encoder"] + (["text_encoder"] if source == "local" else [])
        seconds = self.pipe.load([g for g in wanted if g in graphs])
        self.metrics = Metrics(self.name)
        self.embeddings = Embeddings(self.pipe, source, model_dir, float(params.get("prompt_cache_mb") or 0), self.metrics)
        if params.get("warmup") == "true":
            self.logger.log_info(f"{self.name}: warm-up step in {self._warm_up(model_dir, source):.2f}s")
        self.logger.log_info(f"{self.name}: {self.pipe!r} ({self.pipe.variant}) ready, sessions in {seconds:.2f}s, "
                             f"text encoder {source}, ONNX Runtime {flux2.ort_library()}")

    def _warm_up(self, model_dir, source):
        """One sampling step at the default size before ready (kernels, allocator); with the
        encoder elsewhere, on zero embeddings (BLS cannot run while the server starts)."""
        t = time.perf_counter()
        if source == "local":
            self.pipe.generate("warm-up", steps=1)
        else:
            with open(os.path.join(model_dir, "manifest.json")) as f:
                inputs = json.load(f)["graphs"]["transformer"]["inputs"]
            ctx = int(next(i for i in inputs if i["name"] == "encoder_hidden_states")["shape"][2])
            zeros = np.zeros((1, 8, ctx), np.float32)
            self.pipe.generate(prompt_embeds=zeros, negative_prompt_embeds=zeros, steps=1)
        return time.perf_counter() - t

    # --- outputs -----------------------------------------------------------------------
    def _outputs(self, request, images):
        wanted = set(request.requested_output_names()) or {"image", "images"}
        lead = (lambda a: a[np.newaxis]) if self.batched else (lambda a: a)
        outputs = []
        if "image" in wanted:
            outputs.append(pb_utils.Tensor("image", lead(np.ascontiguousarray(images[0]))))
        if "images" in wanted:
            outputs.append(pb_utils.Tensor("images", lead(np.stack(images))))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    # --- generation ----------------------------------------------------------------------
    def _embedded(self, kwargs):
        """kwargs with the prompts replaced by embeddings (the text encoder runs apart)."""
        kw = dict(kwargs)
        kw["prompt_embeds"] = self.embeddings.get(kw.pop("prompt"))
        kw["negative_prompt_embeds"] = self.embeddings.get(kw.pop("negative_prompt", ""))
        return kw

    def _step_cache(self, kwargs):
        """kwargs with the request's step caching (else the model's default) as generate() takes it."""
        kw = dict(kwargs)
        cache = kw.pop("cache", self.step_cache)
        if cache != "off":
            kw["cache"] = cache
        return kw

    def _run(self, kwargs, progress):
        """One request alone: a list of images."""
        kwargs = self._step_cache(kwargs)
        if self.embeddings.source != "local":
            t = time.perf_counter()
            kwargs = self._embedded(kwargs)
            add(self.metrics.stage["prompt_embeds"], time.perf_counter() - t)
        result = self.pipe.generate(progress=progress, **kwargs)
        images = result if isinstance(result, list) else [result]
        self.metrics.run(self.pipe.last_timings or {}, len(images))
        return images

    def _run_batch(self, group, progress):
        """Requests that agree on everything but prompt and seed: one pipeline batch."""
        t = time.perf_counter()
        embedded = [self._embedded(self._step_cache(kw)) for kw in group]
        add(self.metrics.stage["prompt_embeds"], time.perf_counter() - t)
        common = {k: v for k, v in embedded[0].items() if k not in ("prompt_embeds", "negative_prompt_embeds", "seed")}
        images = self.pipe.generate(
            prompt_embeds=np.concatenate([kw["prompt_embeds"] for kw in embedded]),
            negative_prompt_embeds=np.concatenate([kw["negative_prompt_embeds"] for kw in embedded]),
            seeds=[kw.get("seed", 0) for kw in embedded], progress=progress, **common)
        self.metrics.run(self.pipe.last_timings or {}, len(images))
        return [[image] for image in images]

    def _answer(self, requests, kwargs_list, started):
        """Responses of requests that parsed; a group's failure is each member's."""
        progress = lambda stage, step, total: not all(r.is_cancelled() for r in requests)  # noqa: E731
        add(self.metrics.wait, (time.perf_counter() - started) * len(requests))
        try:
            if len(requests) == 1:
                results = [self._run(kwargs_list[0], progress)]
            else:
                results = self._run_batch(kwargs_list, progress)
        except flux2.CancelledError as e:
            self.logger.log_info(f"{self.name}: request {[r.request_id() for r in requests]!r} {e}")
            return [_error(f"flux2: {e}", "CANCELLED") for _ in requests]
        except ValueError as e:
            return [_error(str(e), "INVALID_ARG") for _ in requests]
        except Exception as e:  # a fault of these requests: answer them, keep serving
            return [_error(f"flux2: {e}", "INTERNAL") for _ in requests]
        return [_error("flux2: cancelled", "CANCELLED") if r.is_cancelled() else self._outputs(r, images)
                for r, images in zip(requests, results)]

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        started = time.perf_counter()
        responses, groups = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                kwargs = request_kwargs(request)
            except ValueError as e:
                responses[i] = _error(str(e), "INVALID_ARG")
                continue
            key = batch_key(kwargs)
            groups.setdefault(("alone", i) if key is None else key, []).append((i, kwargs))
        for members in groups.values():
            index = [i for i, _ in members]
            answers = self._answer([requests[i] for i in index], [kw for _, kw in members], started)
            for i, answer in zip(index, answers):
                responses[i] = answer
        add(self.metrics.requests, len(requests))
        return responses

    # --- streaming -----------------------------------------------------------------------
    def _stream(self, request):
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        started = time.perf_counter()
        cancelled = getattr(sender, "is_cancelled", request.is_cancelled)
        done = [0]

        def progress(stage, step, total):
            finished = step if stage == "denoise" else (total_steps[0] if stage == "vae decode" else 0)
            if stage == "denoise":
                total_steps[0] = total
            while done[0] < finished and not cancelled():
                done[0] += 1
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("step", np.array([done[0]], np.int32)),
                    pb_utils.Tensor("total", np.array([total_steps[0]], np.int32)),
                    pb_utils.Tensor("seconds", np.array([time.perf_counter() - started], np.float32))]))
            return not cancelled()

        total_steps = [0]
        try:
            kwargs = request_kwargs(request)
            images = self._run(kwargs, progress)
            response = self._outputs(request, images)
        except flux2.CancelledError as e:
            self.logger.log_info(f"{self.name}: request {request.request_id()!r} {e}")
            response = _error(f"flux2: {e}", "CANCELLED")
        except ValueError as e:
            response = _error(str(e), "INVALID_ARG")
        except Exception as e:
            response = _error(f"flux2: {e}", "INTERNAL")
        add(self.metrics.requests, 1)
        try:
            sender.send(response, flags=final)
        except Exception as e:  # the client is gone (cancelled stream)
            self.logger.log_info(f"{self.name}: request {request.request_id()!r}: final response not sent ({e})")

    def finalize(self):
        self.pipe = None
