"""Test helpers: a minimal Hugging Face Hub on 127.0.0.1, and a GHN-loading worker process.

:class:`HubServer` implements the endpoints ``huggingface_hub.hf_hub_download`` uses:
``HEAD``/``GET {endpoint}/{repo_id}/resolve/{revision}/{filename}`` answered with
``X-Repo-Commit``, ``ETag`` (sha256 for ``.safetensors`` files, as the Hub does for LFS files,
with ``X-Linked-Etag``/``X-Linked-Size``; the git blob sha1 otherwise) and ``Content-Length``,
``Range`` requests, the Hub's ``X-Error-Code`` errors (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), ``/api/models/{repo_id}[/revision/{revision}]`` and
``/api/models/{repo_id}/tree/{revision}`` (used by ``snapshot_download`` and ``hf download``). It serves folders as
commits of repos, counts every request, and can damage the weights it serves. It also stands in
for GitHub's raw-file endpoint: ``GET {url}/raw/{owner}/{repo}/{commit}/{path}`` serves files added
with :meth:`HubServer.add_raw` (the base URL up to the commit is what ``GHNINIT_OFFICIAL_URL``
replaces). It listens on 127.0.0.1 only, on a free port, and stops when its ``with`` block ends.

:func:`worker_main` runs in a subprocess started with the environment under test (huggingface_hub
reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HOME`` when imported): it answers JSON requests
on stdin, one per line, so one process can load several times while the test inspects the server
between loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

RESPONSE_PREFIX = "@@ "
TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes (the Hub's ETag for files not stored with LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """A threaded HTTP server that serves folders as commits of Hub model repos.

    Attributes:
        requests: ``(method, path)`` of every request received, in order.
        authorizations: the ``Authorization`` header of every request (None when absent), in order.
        corrupt: how to damage ``.safetensors`` bodies: ``None``; ``"flip"`` (bytes changed in the
            tensor data, same size, ETag of the intact file: damage in transit or on a mirror);
            ``"truncate"`` (half the body, while HEAD announces the full size); ``"bad_upload"``
            (the header overwritten and the ETag computed from the damaged bytes, as if a
            damaged file had been uploaded). Raw files (:meth:`add_raw`) are damaged as
            :meth:`_raw_body` says (``"flip"``, ``"short"``, ``"truncate"``).
        raw: URL path -> bytes of the raw files served.
        raw_delay: seconds to wait before sending a raw file (to make concurrent downloads overlap).
        fault: a network fault for raw files, and for GETs of Hub files (``stall``, ``stall_body`` and
            ``error`` only) (:meth:`set_fault`): ``None``; ``"stall"`` (the request is
            read and never answered); ``"stall_body"`` (headers and half the body, then silence);
            ``"reset"`` (headers and half the body, then a TCP reset); ``"error"`` (HTTP 500);
            ``"slow"`` (the body in pieces of :attr:`slow_chunk` bytes, :attr:`slow_delay` s apart).
        fault_times: how many more requests get :attr:`fault` (``None``: all of them).
        ranges: whether raw files honour ``Range: bytes=N-`` (206 with ``Content-Range``), as GitHub does.
        sent: URL path -> body bytes written to clients for it, over all requests.
        range_headers: the ``Range`` header of every raw-file request (None when absent), in order.
    """

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.corrupt: str | None = None
        self.raw: dict[str, bytes] = {}
        self.raw_delay = 0.0
        self.fault: str | None = None
        self.fault_times: int | None = None
        self.ranges = True
        self.slow_chunk, self.slow_delay = 64 * 1024, 0.05
        self.sent: dict[str, int] = {}
        self.range_headers: list[str | None] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_commit(self, repo_id: str, folder: Path, branch: str | None = "main") -> str:
        """Serve the files of ``folder`` as a commit of ``repo_id``; returns its 40-hex sha."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        digest = hashlib.sha1(repo_id.encode())
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        sha = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}})
        repo["commits"][sha] = files
        if branch:
            repo["refs"][branch] = sha
        return sha

    def add_raw(self, repo: str, commit: str, path: str, data: bytes) -> str:
        """Serve ``data`` as the raw file ``path`` of GitHub repo ``repo`` at ``commit``; returns the base URL
        (up to and including the commit) to put in ``GHNINIT_OFFICIAL_URL``."""
        base = f"/raw/{repo}/{commit}"
        self.raw[f"{base}/{path}"] = data
        return self.url + base

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def paths(self, method: str | None = None) -> list[str]:
        """Paths requested so far (optionally only those of one method)."""
        with self._lock:
            return [p for m, p in self.requests if method is None or m == method]

    def reset(self) -> None:
        """Forget the requests received so far (and the bytes sent, and the Range headers)."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.sent.clear()
            self.range_headers.clear()

    def set_fault(self, fault: str | None, times: int | None = None) -> None:
        """Give the next ``times`` raw-file requests (all: ``None``) the network fault ``fault`` (see :attr:`fault`)."""
        if fault not in (None, "stall", "stall_body", "reset", "error", "slow"):
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self.fault, self.fault_times = fault, times

    def _take_fault(self) -> str | None:
        with self._lock:
            fault = self.fault
            if fault is not None and self.fault_times is not None:
                self.fault_times -= 1
                if self.fault_times <= 0:
                    self.fault, self.fault_times = None, None
            return fault

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def __enter__(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.handle_error = _quiet_handle_error  # a client that hangs up is part of the tests
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()  # ends stalled answers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # -- request handling ----------------------------------------------------------------------

    def _record(self, method: str, path: str, authorization: str | None = None) -> None:
        with self._lock:
            self.requests.append((method, path))
            self.authorizations.append(authorization)

    def _resolve(self, repo_id: str, revision: str):
        """``(status, headers, commit, files)`` for a repo and a branch, tag or commit."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, None, None
        sha = revision if revision in repo["commits"] else repo["refs"].get(revision)
        if sha is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, None, None
        return 200, {}, sha, repo["commits"][sha]

    def _body(self, filename: str, data: bytes) -> tuple[bytes, str, int]:
        """``(body, etag, announced size)`` for a file, damaged as :attr:`corrupt` says."""
        lfs = filename.endswith(".safetensors")
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        if not lfs or self.corrupt is None:
            return data, etag, len(data)
        if self.corrupt == "flip":
            damaged = bytearray(data)
            for i in range(len(data) // 2, len(data) // 2 + 64):
                damaged[i] ^= 0xFF
            return bytes(damaged), etag, len(data)
        if self.corrupt == "truncate":
            return data[: len(data) // 2], etag, len(data)
        if self.corrupt == "bad_upload":
            damaged = b"\x00" * 64 + data[64:]
            return damaged, hashlib.sha256(damaged).hexdigest(), len(damaged)
        raise ValueError(f"unknown corruption {self.corrupt!r}")

    def _raw_body(self, data: bytes) -> tuple[bytes, int]:
        """``(body, announced size)`` of a raw file: ``"flip"`` changes bytes (same size), ``"short"``
        serves the first half as if it were the whole file, ``"truncate"`` announces the full size
        and closes the connection half way."""
        if self.corrupt == "flip":
            damaged = bytearray(data)
            for i in range(len(data) // 2, len(data) // 2 + 64):
                damaged[i] ^= 0xFF
            return bytes(damaged), len(data)
        if self.corrupt == "short":
            return data[: len(data) // 2], len(data) // 2
        if self.corrupt == "truncate":
            return data[: len(data) // 2], len(data)
        return data, len(data)


def _quiet_handle_error(request, client_address) -> None:
    """Ignore connections the client closed or reset (fault tests do that); print anything else."""
    if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
        import traceback

        traceback.print_exc()


def _make_handler(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # seconds an idle keep-alive connection is kept

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False, length=None):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            path = urlsplit(self.path).path
            server._record(self.command, path, self.headers.get("Authorization"))
            parts = path.split("/")
            if parts[1] == "raw":
                return self._raw_file(path, head)
            if len(parts) >= 6 and parts[3] == "resolve":
                return self._resolve_file(f"{unquote(parts[1])}/{unquote(parts[2])}", unquote(parts[4]), parts, head)
            if len(parts) >= 5 and parts[1:3] == ["api", "models"]:
                repo_id = f"{unquote(parts[3])}/{unquote(parts[4])}"
                if len(parts) >= 7 and parts[5] == "tree":
                    return self._tree(repo_id, unquote(parts[6]), head)
                revision = unquote(parts[6]) if len(parts) >= 7 and parts[5] == "revision" else "main"
                return self._repo_info(repo_id, revision, head)
            self._send(404, {"X-Error-Message": "not a Hub endpoint"}, b"not found", head)

        def _resolve_file(self, repo_id: str, revision: str, parts: list[str], head: bool) -> None:
            status, headers, sha, files = server._resolve(repo_id, revision)
            filename = "/".join(unquote(p) for p in parts[5:])
            if status == 200 and filename not in files:
                status, headers = 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}
            if sha:
                headers["X-Repo-Commit"] = sha
            if status != 200:
                return self._send(status, headers, b"error", head)
            body, etag, size = server._body(filename, files[filename])
            headers.update({"ETag": f'"{etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
            if filename.endswith(".safetensors"):
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
            if head:
                return self._send(200, headers, head=True, length=size)
            fault = server._take_fault()  # as for raw files; HEAD requests are never affected
            if fault in ("stall", "stall_body"):
                if fault == "stall_body":
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self._write(self.path, body[: len(body) // 2])
                server.stop.wait(60)
                self.close_connection = True
                return
            if fault == "error":
                return self._send(500, {"Content-Type": "text/plain"}, b"500: Internal Server Error")
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{size}"
            self._send(206 if start else 200, headers, body[start:])

        def _raw_file(self, path: str, head: bool) -> None:
            data = server.raw.get(unquote(path))
            if data is None:
                return self._send(404, {"Content-Type": "text/plain"}, b"404: Not Found", head)
            with server._lock:
                server.range_headers.append(self.headers.get("Range"))
            fault = None if head else server._take_fault()
            if fault == "stall":
                server.stop.wait(60)
                self.close_connection = True
                return
            if fault == "error":
                return self._send(500, {"Content-Type": "text/plain"}, b"500: Internal Server Error", head)
            body, size = server._raw_body(data)
            if server.raw_delay:  # a slow download, so that concurrent loaders overlap
                time.sleep(server.raw_delay)
            headers, status, start = {"Content-Type": "application/octet-stream"}, 200, 0
            if server.ranges:
                headers["Accept-Ranges"] = "bytes"
                asked = self.headers.get("Range", "")
                if asked.startswith("bytes=") and asked.endswith("-"):
                    start = int(asked[6:-1])
                    if start >= size:
                        return self._send(416, {"Content-Range": f"bytes */{size}"}, b"", head)
                    status, headers["Content-Range"] = 206, f"bytes {start}-{size - 1}/{size}"
            body = body[start:]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if head:
                return
            if fault in ("stall_body", "reset"):
                half = len(body) // 2
                self._write(path, body[:half])
                if fault == "stall_body":
                    server.stop.wait(60)
                else:  # RST instead of FIN: the client sees "connection reset"
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            if fault == "slow":
                for i in range(0, len(body), server.slow_chunk):
                    self._write(path, body[i : i + server.slow_chunk])
                    if server.stop.wait(server.slow_delay):
                        break
            else:
                self._write(path, body)
            if len(body) < size - start:
                self.close_connection = True  # the client sees the body cut short

        def _write(self, path: str, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            server._count(unquote(path), len(data))

        def _repo_info(self, repo_id: str, revision: str, head: bool) -> None:
            status, headers, sha, files = server._resolve(repo_id, revision)
            if status != 200:
                return self._send(status, headers, b"{}", head)
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": [{"rfilename": n} for n in files]}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), head)

        def _tree(self, repo_id: str, revision: str, head: bool) -> None:
            status, headers, sha, files = server._resolve(repo_id, revision)
            if status != 200:
                return self._send(status, headers, b"{}", head)
            entries = []
            for name, data in files.items():
                entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode(), head)

    return Handler


class Worker:
    """A subprocess running ``hub_server.worker_main`` in a given environment."""

    def __init__(self, env: dict[str, str], log: Path):
        self._log = open(log, "w")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS_DIR / "hub_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=TESTS_DIR,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(RESPONSE_PREFIX):
                self._lines.put(line[len(RESPONSE_PREFIX) :])
        self._lines.put(None)

    def read(self, timeout: float = 120) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker gave no answer in {timeout}s; log:\n{self.log.read_text()[-3000:]}") from None
        if line is None:
            raise AssertionError(f"worker exited; log:\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def send(self, op: str, **kwargs) -> None:
        """Send a request without waiting for the answer (see :meth:`read`)."""
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()

    def ask(self, op: str, **kwargs) -> dict:
        self.send(op, **kwargs)
        return self.read()

    def close(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def worker_env(server: HubServer, hf_home: Path, offline: bool, **extra: str) -> dict[str, str]:
    """The environment of a worker: this server as Hub endpoint, its own HF_HOME, offline or not, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GHNINIT_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",  # else huggingface_hub fetches an agent registry from the endpoint
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")]),
        GHNINIT_CACHE=str(hf_home / "ghninit"),  # converted official files: never the user's cache
        GHNINIT_OFFICIAL_URL=f"{server.url}/raw/no-such-mirror",  # never GitHub
    )
    env.update(extra)
    return env


def state_digest(ghn) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values), to compare GHNs across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(ghn.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def worker_main() -> None:
    """Answer JSON requests from stdin, one per line, with one ``@@ {json}`` line each.

    Operations: ``load`` (``ghninit.load_ghn(source, revision, cache_dir=, force_download=)``; answers
    the GHN's digest, config and any warnings), ``download`` (``ghninit.download_ghn``), ``list``
    (``ghninit.list_ghns``), ``initialize`` (``ghninit.initialize`` on a parity fixture's model with
    ``dataset=``; answers the differences from the fixture), ``init_resnet18`` (``initialize`` on a
    seeded CIFAR ResNet-18; answers a digest of its parameters), ``pin`` (put a Hub source first
    in a known GHN's sources), ``register`` (a known GHN with one official file, pinned by path and
    blob SHA-1: the test hook), ``setenv``.
    """
    import dataclasses
    import warnings

    from parity import build_model, compare, load_fixture

    import ghninit
    import ghninit.zoo.hub
    from ghninit.zoo.official import OfficialFile
    from ghninit.zoo.registry import KNOWN_GHNS, HubWeights, KnownGHN, register_ghn

    print(RESPONSE_PREFIX + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "load":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ghn = ghninit.load_ghn(request.pop("source"), **request)
                answer = {
                    "ok": True,
                    "digest": state_digest(ghn),
                    "num_classes": ghn.num_classes,
                    "config": ghn.config,
                    "warnings": [str(w.message) for w in caught],
                }
            elif op == "download":
                answer = {"ok": True, "path": str(ghninit.download_ghn(request.pop("source"), **request))}
            elif op == "list":
                answer = {"ok": True, "rows": ghninit.list_ghns(**request)}
            elif op == "initialize":
                fixture = load_fixture(request["fixture"])
                model = build_model(fixture)
                report = ghninit.initialize(model, dataset=request["dataset"])
                predicted = {n: p for n, p in model.named_parameters() if n in set(report.predicted)}
                answer = {"ok": True, "problems": compare(predicted, fixture)}
            elif op == "init_resnet18":
                model = seeded_resnet18()
                report = ghninit.initialize(model, dataset=request["dataset"])
                answer = {"ok": True, "digest": state_digest(model), "predicted": len(report.predicted)}
            elif op == "pin":
                entry = KNOWN_GHNS[request.pop("name")]
                others = tuple(s for s in entry.sources if not isinstance(s, HubWeights))
                register_ghn(dataclasses.replace(entry, sources=(HubWeights(**request), *others)), replace=True)
                answer = {"ok": True}
            elif op == "register":
                hub = (HubWeights(**request.pop("hub")),) if request.get("hub") else ()
                request.pop("hub", None)
                official = OfficialFile(request.pop("path"), request.pop("blob_sha1"))
                register_ghn(KnownGHN(sources=(*hub, official), **request), replace=True)
                answer = {"ok": True}
            elif op == "setenv":
                for key, value in request.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                answer = {"ok": True}
            else:
                answer = {"ok": False, "type": "ValueError", "message": f"unknown op {op}"}
        except Exception as err:  # reported to the test, which decides
            answer = {"ok": False, "type": type(err).__name__, "message": str(err)}
        print(RESPONSE_PREFIX + json.dumps(answer), flush=True)
    sys.stderr.flush()
    os._exit(0)  # stdin closed: skip the interpreter's teardown of torch (seconds), nothing is left to write


def seeded_resnet18():
    """A ResNet-18 for 32x32 inputs, 10 classes, with the same default initialisation in every process."""
    import torch
    import torchvision

    from ghninit.adapt import adapt_to_cifar

    torch.manual_seed(0)
    return adapt_to_cifar(torchvision.models.resnet18(num_classes=10))


if __name__ == "__main__":
    worker_main()
