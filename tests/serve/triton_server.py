"""A real Triton Inference Server for tests and benchmarks, from PyPI's nvidia-pytriton wheel.

The wheel ships `tritonserver` (Triton 2.51), the Python backend and one backend stub per
Python version; its shared libraries live in site-packages/nvidia_pytriton.libs. The stub
matching this interpreter is copied into a private copy of backends/python (the backend looks
for `triton_python_backend_stub` beside itself), and the server is bound to 127.0.0.1 on free
ports. The stub embeds the system's libpython of the same version, which ignores PYTHONPATH
(isolated configuration) and finds its prefix from the first `python3` on PATH: the bin folder
of `python_env` goes first, so the stub's Python sees that venv's site-packages. That venv holds
numpy<2 (the 2.51 stub's pybind11 predates numpy 2's ABI: with numpy 2 it misreads tensors)
and the flux2 package; ONNX Runtime comes from ORT_DYLIB_PATH.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytriton_dirs():
    """(tritonserver root, its libraries) inside the installed nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run scripts/setup_serve.sh")
    pkg = list(spec.submodule_search_locations)[0]
    root = os.path.join(pkg, "tritonserver")
    libs = os.path.join(os.path.dirname(pkg), "nvidia_pytriton.libs")
    for p in (os.path.join(root, "bin", "tritonserver"), libs):
        if not os.path.exists(p):
            raise RuntimeError(f"nvidia-pytriton is incomplete: {p} is missing")
    return root, libs


class TritonServer:
    """`with TritonServer(repo) as s:` starts the server and waits until every model is ready."""

    def __init__(self, repository, python_env, models=None, log_path=None, startup_timeout=180, exit_timeout=30,
                 extra_args=(), metrics=False):
        self.repository = os.path.abspath(repository)
        self.python_env = os.path.abspath(python_env)
        if not os.path.isfile(os.path.join(self.python_env, "bin", "python3")):
            raise RuntimeError(f"no Python environment for the server at {self.python_env}: run scripts/setup_serve.sh")
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        # only these models (explicit model control): nvidia-pytriton has no onnxruntime backend
        self.extra_args = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)] if models else []
        self.extra_args += list(extra_args)
        self.work = tempfile.mkdtemp(prefix="flux2-triton-")
        self.log_path = log_path or os.path.join(self.work, "server.log")
        self.metrics = metrics
        self.proc = None
        self.http_port = self.grpc_port = self.metrics_port = None
        self.ready_seconds = None  # from the start of the process to ready

    def _backends(self, root):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = os.path.join(root, "python_backend_stubs", version, "triton_python_backend_stub")
        if not os.path.isfile(stub):
            raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
        backends = os.path.join(self.work, "backends")
        shutil.copytree(os.path.join(root, "backends"), backends)
        shutil.copy2(stub, os.path.join(backends, "python", "triton_python_backend_stub"))
        return backends

    def _env(self, libs):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join(p for p in (os.path.join(self.python_env, "bin"), env.get("PATH")) if p)
        if not env.get("ORT_DYLIB_PATH"):
            import importlib.util

            spec = importlib.util.find_spec("onnxruntime")
            for root in (spec.submodule_search_locations or []) if spec else []:
                lib = os.path.join(root, "capi", "libonnxruntime.so.1.31.1")
                if os.path.isfile(lib):
                    env["ORT_DYLIB_PATH"] = lib
        return env

    def start(self):
        root, libs = pytriton_dirs()
        backends = self._backends(root)
        self.http_port, self.grpc_port = free_port(), free_port()
        if self.metrics:
            self.metrics_port = free_port()
            metrics = ["--allow-metrics=true", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        else:
            metrics = ["--allow-metrics=false"]
        cmd = [
            os.path.join(root, "bin", "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={os.path.join(root, 'caches')}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            *metrics,
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
            *self.extra_args,
        ]
        self.log = open(self.log_path, "wb")
        t = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self._env(libs))
        self._wait_ready()
        self.ready_seconds = time.monotonic() - t
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {self.startup_timeout}s:\n{self.log_text()}")

    def metrics_text(self):
        """The Prometheus text of the metrics endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def pids(self):
        """The server and its backend stub processes (their command lines name our private folder)."""
        pids = [self.proc.pid] if self.proc else []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.work.encode() in f.read() and int(pid) not in pids:
                        pids.append(int(pid))
            except OSError:
                pass
        return pids

    def rss_bytes(self):
        """Resident memory of the server and every stub, summed."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, then wait for the server (it drains in-flight requests); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.exit_timeout + 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        code = self.proc.returncode
        return code

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()
