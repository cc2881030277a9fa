"""Downloads on a bad network: every fault ends in a clear error within the timeouts, or is recovered.

A local server on 127.0.0.1 (:class:`hub_server.HubServer`) misbehaves on purpose (``set_fault``:
stall, stall half-way through the body, reset half-way, slow body, HTTP 500, a body shorter than
announced), and a process is killed half-way through a download. The timeouts are short
(``GHNINIT_DOWNLOAD_TIMEOUT=0.5``), so each case takes a few seconds at most. The download function is
tested with both of its clients (huggingface_hub's httpx session, and the urllib fallback); the rows
of issue 22 (stall, reset, killed process, damaged cache, disk full) also through ``load_ghn``, as a
user meets them. GHN-3 files come through ``hf_hub_download``: a stalled ``HF_ENDPOINT`` must end as
soon, and ``HF_HUB_DOWNLOAD_TIMEOUT`` must apply to its download.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock
from hub_server import HubServer, Worker, state_digest, worker_env
from test_official import REPO, cached_files, entry, write_reference_checkpoint

import ghninit.zoo.download as download
from ghninit.errors import GHNLoadError, SourceUnavailable
from ghninit.zoo.cache import git_blob_sha1
from ghninit.zoo.download import DownloadSettings, download_file
from ghninit.zoo.hub import ghn_from_reference_checkpoint, load_ghn
from ghninit.zoo.official import PPUDA_COMMIT
from ghninit.zoo.registry import KNOWN_GHNS, register_ghn

FAST = DownloadSettings(connect_timeout=0.5, read_timeout=0.5, retries=2, backoff=0.05, max_backoff=0.2)
SIZE = 2_000_000
BACKENDS = ["httpx", "urllib"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with random bytes (``data.bin``) and a GHN-2 checkpoint in the reference's format."""
    tmp = tmp_path_factory.mktemp("faults")
    data = random.Random(22).randbytes(SIZE)
    checkpoint = tmp / "test_faults_ghn2.pt"
    write_reference_checkpoint(checkpoint, "ghn2", seed=7)
    with HubServer() as server:
        base = server.add_raw(REPO, PPUDA_COMMIT, "blob/data.bin", data)
        server.add_raw(REPO, PPUDA_COMMIT, f"checkpoints/{checkpoint.name}", checkpoint.read_bytes())
        yield SimpleNamespace(
            server=server,
            base=base,
            url=f"{base}/blob/data.bin",
            data=data,
            checkpoint=checkpoint,
            ckpt_path=f"checkpoints/{checkpoint.name}",
            ckpt_url=f"{base}/checkpoints/{checkpoint.name}",
            blob=git_blob_sha1(checkpoint),
            digest=state_digest(ghn_from_reference_checkpoint(checkpoint)),
        )


@pytest.fixture
def server(served):
    """The server, healthy and with its counters reset, before and after each test."""
    s = served.server

    def heal():
        s.set_fault(None)
        s.corrupt, s.ranges, s.slow_chunk, s.slow_delay, s.raw_delay = None, True, 64 * 1024, 0.05, 0.0
        s.reset()

    heal()
    yield s
    heal()


def _sent(server: HubServer, path: str, expected: int, wait: float = 3.0) -> int:
    """Bytes the server sent for ``path``, once they reach ``expected`` (its counter follows the socket by a moment)."""
    deadline = time.monotonic() + wait
    while server.sent.get(path, 0) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and nothing more arrives
    return server.sent.get(path, 0)


def _wait_until_quiet(server: HubServer, path: str, quiet: float = 0.5, wait: float = 5.0) -> None:
    """Wait until the server's byte counter for ``path`` has not moved for ``quiet`` seconds."""
    deadline, last, since = time.monotonic() + wait, server.sent.get(path, 0), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.02)
        now = server.sent.get(path, 0)
        if now != last:
            last, since = now, time.monotonic()


def _download(served, tmp_path: Path, backend: str, **kwargs):
    return download_file(served.url, tmp_path / "data.bin", settings=FAST, backend=backend, **kwargs)


def _fails(call, *needles: str) -> str:
    start = time.monotonic()
    with pytest.raises(SourceUnavailable) as err:
        call()
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    return message, time.monotonic() - start


# -- the download function, with either client ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_healthy_download_is_one_plain_request_and_leaves_only_the_file(served, server, tmp_path, backend):
    result = _download(served, tmp_path, backend)
    assert (tmp_path / "data.bin").read_bytes() == served.data
    assert (result.size, result.resumed_from, result.received, result.attempts) == (SIZE, 0, SIZE, 1)
    assert server.range_headers == [None] and sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_server_times_out_with_the_timeout_named(served, server, tmp_path, backend):
    server.set_fault("stall")
    message, took = _fails(
        lambda: _download(served, tmp_path, backend),
        "timed out",
        "sent no data for 0.5 s (the read timeout)",
        "3 attempts",
        "GHNINIT_DOWNLOAD_TIMEOUT=",
        served.url,
    )
    assert took < 4, f"{took:.1f} s"  # 3 x 0.5 s + 0.15 s of backoff, with margin for a loaded machine
    assert len(server.range_headers) == 3 and not (tmp_path / "data.bin").exists()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", ["stall_body", "reset"])
def test_a_body_cut_once_is_resumed_with_range_and_nothing_is_fetched_twice(served, server, tmp_path, backend, fault):
    server.set_fault(fault, times=1)
    result = _download(served, tmp_path, backend)
    assert (tmp_path / "data.bin").read_bytes() == served.data
    first, second = server.range_headers
    assert first is None and second.startswith("bytes=") and second != "bytes=0-"
    resumed_at = int(second[6:-1])
    assert 0 < resumed_at <= SIZE // 2 and result.attempts == 2
    # what the server sent in all equals the file plus what the client had not yet written when it was cut
    expected = SIZE // 2 + SIZE - resumed_at
    assert _sent(server, f"/raw/{REPO}/{PPUDA_COMMIT}/blob/data.bin", expected) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_500_then_success_is_retried(served, server, tmp_path, backend):
    server.set_fault("error", times=2)
    result = _download(served, tmp_path, backend)
    assert result.attempts == 3 and (tmp_path / "data.bin").read_bytes() == served.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_500_every_time_gives_up_after_the_retries(served, server, tmp_path, backend):
    server.set_fault("error")
    _fails(lambda: _download(served, tmp_path, backend), "answered HTTP 500", "3 attempts", "GHNINIT_DOWNLOAD_RETRIES")
    assert len(server.range_headers) == 3


def test_a_missing_file_is_not_retried(served, server, tmp_path):
    url = f"{served.base}/blob/no-such-file"
    _fails(lambda: download_file(url, tmp_path / "x", settings=FAST), "answered HTTP 404")
    assert len(server.paths("GET")) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_body_that_keeps_coming_is_not_a_timeout(served, server, tmp_path, backend):
    server.set_fault("slow")  # 64 KiB every 0.05 s: ~1.6 s in all, far longer than the 0.5 s read timeout
    start = time.monotonic()
    result = _download(served, tmp_path, backend)
    assert time.monotonic() - start > FAST.read_timeout and result.attempts == 1
    assert (tmp_path / "data.bin").read_bytes() == served.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_body_shorter_than_announced_is_incomplete_not_a_hash_error_and_resumes_later(
    served, server, tmp_path, backend
):
    server.corrupt = "truncate"  # Content-Length of the whole file, half of it sent, then the connection closes
    message, _ = _fails(
        lambda: _download(served, tmp_path, backend), "download incomplete (1.0 of 2.0 MB)", "resumes", "data.bin.partial"
    )
    assert "hash" not in message and "SHA" not in message
    assert (tmp_path / "data.bin.partial").stat().st_size == SIZE // 2 and not (tmp_path / "data.bin").exists()

    server.corrupt = None
    server.reset()
    result = _download(served, tmp_path, backend)
    assert server.range_headers == [f"bytes={SIZE // 2}-"] and result.resumed_from == SIZE // 2
    assert result.received == SIZE - SIZE // 2 and (tmp_path / "data.bin").read_bytes() == served.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_that_ignores_range_sends_everything_and_the_file_is_still_right(served, server, tmp_path, backend):
    (tmp_path / "data.bin.partial").write_bytes(b"x" * 1000)  # nonsense: the whole file replaces it
    server.ranges = False
    result = _download(served, tmp_path, backend)
    assert server.range_headers == ["bytes=1000-"] and result.received == SIZE
    assert (tmp_path / "data.bin").read_bytes() == served.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_partial_longer_than_the_file_is_dropped(served, server, tmp_path, backend):
    (tmp_path / "data.bin.partial").write_bytes(b"x" * (SIZE + 10))  # the server answers 416
    _download(served, tmp_path, backend)
    assert server.range_headers == [f"bytes={SIZE + 10}-", None]
    assert (tmp_path / "data.bin").read_bytes() == served.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_server_is_a_connection_error_that_says_offline(tmp_path, backend):
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pt"
    _fails(
        lambda: download_file(url, tmp_path / "x.pt", settings=FAST, backend=backend),
        "could not connect to 127.0.0.1",
        "offline",
        "GHNINIT_OFFLINE=1",
    )


def test_a_full_disk_is_a_write_error_not_a_network_error(served, server, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(GHNLoadError) as err:
        download_file(served.url, tmp_path / "data.bin", partial="/dev/full", settings=FAST)
    assert not isinstance(err.value, SourceUnavailable)
    assert "could not write the download to /dev/full" in str(err.value) and "No space left" in str(err.value)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("GHNINIT_DOWNLOAD_TIMEOUT", "7")
    monkeypatch.setenv("GHNINIT_DOWNLOAD_RETRIES", "0")
    settings = DownloadSettings.from_env()
    assert (settings.connect_timeout, settings.read_timeout, settings.retries) == (7, 7, 0)
    monkeypatch.setenv("GHNINIT_DOWNLOAD_TIMEOUT", "3,90")
    assert (DownloadSettings.from_env().connect_timeout, DownloadSettings.from_env().read_timeout) == (3, 90)
    monkeypatch.delenv("GHNINIT_DOWNLOAD_TIMEOUT")
    monkeypatch.delenv("GHNINIT_DOWNLOAD_RETRIES")
    assert DownloadSettings.from_env() == DownloadSettings()
    for bad in ("soon", "0", "1,2,3"):
        monkeypatch.setenv("GHNINIT_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(GHNLoadError, match="GHNINIT_DOWNLOAD_TIMEOUT"):
            DownloadSettings.from_env()


# -- through load_ghn: the rows of the issue --------------------------------------------------------------


@pytest.fixture
def registered(served, server, monkeypatch, tmp_path):
    """The checkpoint registered as a known GHN, the server as official endpoint, short timeouts, an empty cache."""
    saved = dict(KNOWN_GHNS)
    register_ghn(entry("test-faults", "ghn2", served.ckpt_path, served.blob))
    monkeypatch.setenv("GHNINIT_OFFICIAL_URL", served.base)
    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GHNINIT_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("GHNINIT_DOWNLOAD_RETRIES", "2")
    monkeypatch.setattr(download, "DEFAULT_BACKOFF", 0.05)
    for var in ("GHNINIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    try:
        yield SimpleNamespace(
            cache=cache,
            work=cache / "ghns" / ".tmp" / f"test-faults--official-{served.blob}",
            folder=cache / "ghns" / "test-faults" / f"official-{served.blob}",
        )
    finally:
        KNOWN_GHNS.clear()
        KNOWN_GHNS.update(saved)


def test_load_ghn_from_a_stalled_server_ends_in_seconds_naming_the_url_and_the_timeout(served, server, registered):
    server.set_fault("stall")
    start = time.monotonic()
    with pytest.raises(GHNLoadError) as err:
        load_ghn("test-faults")
    took, message = time.monotonic() - start, str(err.value)
    for needle in (served.ckpt_url, "timed out", "0.5 s (the read timeout)", "GHNINIT_DOWNLOAD_TIMEOUT=", "no source"):
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert took < 5, f"{took:.1f} s"
    assert cached_files(registered.cache) == [] and not registered.work.exists()


def test_load_ghn_survives_a_reset_half_way_with_the_same_result_as_a_healthy_download(
    served, server, registered, tmp_path, monkeypatch
):
    server.set_fault("reset", times=1)
    ghn = load_ghn("test-faults")
    assert state_digest(ghn) == served.digest and len(server.range_headers) == 2
    files = {p.relative_to(registered.cache): p.read_bytes() for p in cached_files(registered.cache)}
    assert not list(registered.work.parent.iterdir()), "nothing left in .tmp"

    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "healthy"))  # the same GHN, downloaded without a fault
    server.reset()
    assert state_digest(load_ghn("test-faults")) == served.digest and server.range_headers == [None]
    healthy = {p.relative_to(tmp_path / "healthy"): p.read_bytes() for p in cached_files(tmp_path / "healthy")}
    same = {k: v for k, v in files.items() if k.name not in ("provenance.json", "README.md")}
    assert same == {k: v for k, v in healthy.items() if k.name not in ("provenance.json", "README.md")}
    assert files.keys() == healthy.keys(), "same cache layout, same weights"


def test_load_ghn_on_a_cut_body_says_incomplete_keeps_the_partial_and_the_next_load_resumes(
    served, server, registered
):
    server.corrupt = "truncate"
    with pytest.raises(GHNLoadError) as err:
        load_ghn("test-faults")
    message = str(err.value)
    assert "download incomplete (" in message and "is not the pinned file" not in message, message
    partial = registered.work / f"{served.checkpoint.name}.partial"
    half = served.checkpoint.stat().st_size // 2
    assert partial.stat().st_size == half and str(partial) in message.replace("\n     ", " ")

    server.corrupt = None
    server.reset()
    assert state_digest(load_ghn("test-faults")) == served.digest
    assert server.range_headers == [f"bytes={half}-"], "only the missing half was asked for"
    assert not registered.work.exists() and registered.folder.is_dir()


def test_a_process_killed_half_way_is_resumed_by_the_next_one(served, server, registered, tmp_path):
    size = served.checkpoint.stat().st_size
    path = f"/raw/{REPO}/{PPUDA_COMMIT}/{served.ckpt_path}"
    server.slow_chunk, server.slow_delay = size // 40, 0.05  # ~2 s for the whole file
    server.set_fault("slow")
    env = worker_env(server, tmp_path / "hf", offline=False, GHNINIT_OFFICIAL_URL=served.base)
    env["GHNINIT_CACHE"] = str(registered.cache)
    worker = Worker(env, tmp_path / "killed.log")
    try:
        assert worker.read() == {"ready": True}
        answer = worker.ask(
            "register", name="test-faults", variant="ghn2", dataset="cifar10", path=served.ckpt_path,
            blob_sha1=served.blob, hub=None,
        )  # fmt: skip
        assert answer["ok"], answer
        worker.send("load", source="test-faults")
        deadline = time.monotonic() + 30
        while server.sent.get(path, 0) < size // 2:
            assert time.monotonic() < deadline, "the download did not reach half way"
            time.sleep(0.02)
        worker.proc.kill()  # SIGKILL: no cleanup of any kind, the lock is held at that moment
        worker.proc.wait()
    finally:
        worker.close()
    partial = registered.work / f"{served.checkpoint.name}.partial"
    kept = partial.stat().st_size
    assert size // 3 < kept < size, (kept, size)

    _wait_until_quiet(server, path)  # the killed connection's handler may still send a chunk before it sees the reset
    server.set_fault(None)
    server.reset()
    start = time.monotonic()
    assert state_digest(load_ghn("test-faults")) == served.digest
    assert time.monotonic() - start < 10, "the dead process's lock did not block"
    assert server.range_headers == [f"bytes={kept}-"] and _sent(server, path, size - kept) == size - kept
    assert not registered.work.exists() and registered.folder.is_dir()


def test_leftovers_untouched_for_a_day_are_removed_and_recent_ones_kept(served, server, registered):
    tmp = registered.cache / "ghns" / ".tmp"
    old, recent = tmp / "test-faults-ab12cd", tmp / "other--official-0123"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "x.pt.partial").write_bytes(b"123")
    day_ago = time.time() - 25 * 3600
    for p in (old / "x.pt.partial", old):
        os.utime(p, (day_ago, day_ago))
    load_ghn("test-faults")
    assert not old.exists() and (recent / "x.pt.partial").is_file()


def test_waiting_for_a_held_lock_ends_with_an_error_naming_it(served, server, registered, monkeypatch):
    monkeypatch.setenv("GHNINIT_LOCK_TIMEOUT", "0.3")
    lock = registered.cache / "ghns" / ".locks" / f"test-faults--official-{served.blob}.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):  # another process downloading the same GHN
        with pytest.raises(GHNLoadError) as err:
            load_ghn("test-faults")
    for needle in (str(lock), "another process", "GHNINIT_LOCK_TIMEOUT"):
        assert needle in str(err.value), needle
    assert server.requests == []
    assert state_digest(load_ghn("test-faults")) == served.digest  # released: works


def test_a_damaged_cached_copy_stays_a_clear_error_with_the_fix(served, server, registered):
    load_ghn("test-faults")
    weights = registered.folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(GHNLoadError, match=r"damaged(.|\n)*force_download=True"):
        load_ghn("test-faults")
    assert state_digest(load_ghn("test-faults", force_download=True)) == served.digest


def test_a_full_disk_while_converting_leaves_nothing_half_written(served, server, registered, monkeypatch):
    import ghninit.zoo.cache as cache

    def full(ghn, folder, provenance, card):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(cache, "write_ghn_folder", full)
    with pytest.raises(OSError) as err:
        load_ghn("test-faults")
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert cached_files(registered.cache) == [] and not registered.folder.parent.exists()


# -- GHN-3: hf_hub_download -----------------------------------------------------------------------------


def _ghn3_worker(tmp_path: Path, endpoint: str, **extra: str) -> Worker:
    env = worker_env(SimpleNamespace(url=endpoint), tmp_path / "hf", offline=False, **extra)
    worker = Worker(env, tmp_path / "ghn3.log")
    assert worker.read() == {"ready": True}
    return worker


@pytest.mark.parametrize("source", ["ghn3-t", "test-org/ghn2-imagenet"])
def test_a_hub_file_from_a_stalled_hf_endpoint_ends_within_ghninit_timeout(tmp_path, source):
    """GHN-3 names and org/name repos alike: huggingface_hub alone retries a stalled first request for minutes."""
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)  # the kernel accepts connections; nobody ever answers
        host, port = stalled.getsockname()
        worker = _ghn3_worker(
            tmp_path, f"http://{host}:{port}", GHNINIT_DOWNLOAD_TIMEOUT="0.5", GHNINIT_DOWNLOAD_RETRIES="1"
        )
        try:
            start = time.monotonic()
            answer = worker.ask("load", source=source)
            took = time.monotonic() - start
        finally:
            worker.close()
    assert not answer["ok"] and answer["type"] == "GHNLoadError", answer
    filename = "ghn3tm8.pt" if source == "ghn3-t" else "config.json"
    for needle in (filename, "timed out", "0.5 s (the read timeout)", "2 attempts", "HF_ENDPOINT"):
        assert needle in answer["message"], f"{needle!r} not in:\n{answer['message']}"
    assert took < 10, f"{took:.1f} s"


def test_ghn3_download_follows_hf_hub_download_timeout_and_resumes(tmp_path):
    source = KNOWN_GHNS["ghn3-t"].sources[0]
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / source.filename).write_bytes(random.Random(3).randbytes(SIZE))  # not a GHN-3: conversion fails
    with HubServer() as hub:
        hub.add_commit(source.repo_id, repo)
        hub.set_fault("stall_body", times=1)  # the first GET stalls half-way; HEAD is answered
        worker = _ghn3_worker(tmp_path, hub.url, HF_HUB_DOWNLOAD_TIMEOUT="1")
        try:
            start = time.monotonic()
            answer = worker.ask("load", source="ghn3-t")
            took = time.monotonic() - start
        finally:
            worker.close()
        gets = [p for p in hub.paths("GET") if source.filename in p]
    # downloaded in full (two GETs: the second resumed), then refused by the restricted unpickler
    assert not answer["ok"] and "not loadable as a GHN-3 state dict" in answer["message"], answer
    assert len(gets) == 2 and took < 9, (gets, took)  # the default HF_HUB_DOWNLOAD_TIMEOUT alone is 10 s
