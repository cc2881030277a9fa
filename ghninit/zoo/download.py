"""Downloading one file over HTTP(S) so that a bad network ends in a clear error, never a hang.

:func:`download_file` is the one download path of every source that is not a Hugging Face Hub
file (those go through ``hf_hub_download``, which has its own timeouts and resume). It uses the
HTTP client huggingface_hub itself uses (``huggingface_hub.utils.get_session()``: an ``httpx``
client in huggingface_hub >= 1.0, so proxies, certificates and ``set_client_factory`` apply to
both kinds of source alike; with an older huggingface_hub, whose session is ``requests``, it falls
back to the standard library's ``urllib``). Every request has a connect and a read timeout
(:data:`TIMEOUT_ENV`); a transient failure (a timeout, a refused or reset connection, a body cut
short, HTTP 408/429/5xx) is retried with exponential backoff (:data:`RETRIES_ENV`), and the bytes
that arrived are kept in a ``.partial`` file and resumed with an HTTP ``Range`` request when the
server allows it (a server that ignores ``Range`` sends the whole file again). Only a complete
body, as long as the server announced, is renamed to its final name; a final failure says which
timeout expired after how long, or how much of the file had arrived, and how to change the settings.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import GHNLoadError, SourceUnavailable

TIMEOUT_ENV = "GHNINIT_DOWNLOAD_TIMEOUT"
RETRIES_ENV = "GHNINIT_DOWNLOAD_RETRIES"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 20.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
MAX_BACKOFF = 8.0
CHUNK_SIZE = 1 << 16  # urllib reads; httpx yields the body as it arrives
MAX_ATTEMPTS = 50  # attempts that make progress do not use up a retry; this bounds them all the same
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

logger = logging.getLogger("ghninit.download")


@dataclass(frozen=True)
class DownloadSettings:
    """Timeouts and retries of a download.

    Attributes:
        connect_timeout: seconds to wait for a connection to open.
        read_timeout: seconds to wait for the answer's headers, and between two pieces of its body.
        retries: how many times a failed attempt that took the file no further is retried.
        backoff: seconds before the first retry; doubled after each, up to ``max_backoff``.
        max_backoff: the longest wait between two attempts.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = MAX_BACKOFF

    @classmethod
    def from_env(cls) -> DownloadSettings:
        """The defaults, changed by ``GHNINIT_DOWNLOAD_TIMEOUT`` (``READ`` or ``CONNECT,READ``, in seconds)
        and ``GHNINIT_DOWNLOAD_RETRIES`` (an integer >= 0), read at each call."""
        connect, read, retries = DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_RETRIES
        value = os.environ.get(TIMEOUT_ENV, "").strip()
        if value:
            try:
                parts = [float(p) for p in value.split(",")]
                if len(parts) not in (1, 2) or min(parts) <= 0:
                    raise ValueError
            except ValueError:
                raise GHNLoadError(
                    f"{TIMEOUT_ENV}={value!r} is not valid: give the read timeout in seconds (e.g. 60), or "
                    "connect and read timeouts separated by a comma (e.g. 10,60), all > 0"
                ) from None
            connect, read = (min(connect, parts[0]), parts[0]) if len(parts) == 1 else parts
        value = os.environ.get(RETRIES_ENV, "").strip()
        if value:
            if not value.isdigit():
                raise GHNLoadError(f"{RETRIES_ENV}={value!r} is not valid: give a whole number >= 0 (e.g. 3)")
            retries = int(value)
        return cls(connect_timeout=connect, read_timeout=read, retries=retries, backoff=DEFAULT_BACKOFF)

    def describe(self) -> str:
        """The settings in words, with the variables that change them."""
        return (
            f"connect timeout {_secs(self.connect_timeout)}, read timeout {_secs(self.read_timeout)} "
            f"({TIMEOUT_ENV}), {self.retries} retries ({RETRIES_ENV})"
        )


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download_file` did.

    Attributes:
        path: the complete file.
        size: its size in bytes.
        resumed_from: bytes found in the ``.partial`` file of an earlier run and kept (0: none).
        received: body bytes received by this call, over all its attempts.
        attempts: requests made.
    """

    path: Path
    size: int
    resumed_from: int
    received: int
    attempts: int


class _Failure(Exception):
    """One attempt failed; ``kind`` says how, ``transient`` whether another attempt may succeed."""

    def __init__(self, kind: str, detail: str, transient: bool = True, retry_after: float = 0.0):
        super().__init__(detail)
        self.kind, self.detail, self.transient, self.retry_after = kind, detail, transient, retry_after


def _secs(value: float) -> str:
    return f"{value:g} s"


def _mb(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f}"


def _progress(have: int, total: int | None) -> str:
    """``3.1 of 6.2 MB`` (in bytes when the two would read the same), ``3.1 MB``, or ``nothing``."""
    if total is None:
        return f"{_mb(have)} MB" if have else "nothing"
    if have != total and _mb(have) == _mb(total):
        return f"{have:,} of {total:,} bytes"
    return f"{_mb(have)} of {_mb(total)} MB"


# -- the HTTP client: huggingface_hub's httpx session, else urllib --------------------------------------


def _httpx_session():
    """huggingface_hub's shared client and its httpx module, or ``(None, None)`` when it is not httpx."""
    try:
        from huggingface_hub.utils import get_session
    except ImportError:
        return None, None
    session = get_session()
    module = sys.modules.get(type(session).__module__.split(".")[0])
    if module is None or not hasattr(module, "Timeout") or not hasattr(session, "stream"):
        return None, None  # huggingface_hub < 1.0: a requests.Session
    return session, module


@contextlib.contextmanager
def _open(url: str, headers: dict[str, str], settings: DownloadSettings, backend: str) -> Iterator[tuple]:
    """Yield ``(status, headers, chunks)`` of a GET; network errors become :class:`_Failure`."""
    session, httpx = _httpx_session() if backend == "httpx" else (None, None)
    if session is not None:
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        )
        try:
            with session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
                yield response.status_code, response.headers, response.iter_raw(), response.reason_phrase
        except httpx.ConnectTimeout as err:
            raise _Failure("connect-timeout", f"{type(err).__name__}: {err}") from err
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as err:
            raise _Failure("read-timeout", f"{type(err).__name__}: {err}") from err
        except httpx.ConnectError as err:
            raise _Failure("connect", f"{type(err).__name__}: {err}") from err
        except httpx.TransportError as err:  # ReadError, RemoteProtocolError, ProxyError, ...
            raise _Failure("cut", f"{type(err).__name__}: {err}") from err
        except Exception as err:
            if type(err).__name__ == "OfflineModeIsEnabled":
                raise _Failure("offline", str(err), transient=False) from err
            raise
        return
    # urllib: the connect timeout covers opening the connection and waiting for the headers; the read
    # timeout covers the body.
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            response = urllib.request.urlopen(request, timeout=settings.connect_timeout)
        except urllib.error.HTTPError as err:
            try:
                yield err.code, err.headers, iter(()), err.reason
            finally:
                err.close()
            return
        with response:
            with contextlib.suppress(AttributeError, OSError):
                response.fp.raw._sock.settimeout(settings.read_timeout)  # CPython's HTTPResponse internals

            def chunks() -> Iterator[bytes]:
                while chunk := response.read1(CHUNK_SIZE):
                    yield chunk

            yield response.status, response.headers, chunks(), response.reason
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise _Failure("connect-timeout", f"URLError: {err.reason}") from err
        raise _Failure("connect", f"URLError: {err.reason}") from err
    except TimeoutError as err:
        raise _Failure("read-timeout", f"{type(err).__name__}: {err}") from err
    except (ConnectionError, http.client.HTTPException) as err:  # reset, IncompleteRead, RemoteDisconnected
        raise _Failure("cut", f"{type(err).__name__}: {err}") from err


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``(start, total)`` of a ``Content-Range: bytes start-end/total`` header."""
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    if not match:
        return None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


# -- the download ---------------------------------------------------------------------------------------


def download_file(
    url: str,
    dst: str | os.PathLike,
    *,
    partial: str | os.PathLike | None = None,
    settings: DownloadSettings | None = None,
    desc: str | None = None,
    backend: str = "httpx",
) -> DownloadResult:
    """Download ``url`` to ``dst`` with timeouts, retries and resume; returns what was done.

    The body is written to ``partial`` (default ``<dst>.partial``), which an earlier, interrupted
    call may have left: its bytes are kept and the rest is asked for with ``Range``. ``dst`` is
    replaced only by a complete body (as long as the server's ``Content-Length`` or ``Content-Range``
    says). The caller checks the file's hash.

    Args:
        url: an ``http(s)`` URL.
        dst: the file to write.
        partial: where incomplete bytes are kept between attempts and between calls.
        settings: timeouts and retries (default: :meth:`DownloadSettings.from_env`).
        desc: the progress bar's label (default: the file name); the bar follows huggingface_hub's
            ``HF_HUB_DISABLE_PROGRESS_BARS``.
        backend: ``"httpx"`` (huggingface_hub's client when it is httpx, else urllib) or ``"urllib"``.

    Raises:
        SourceUnavailable: the file could not be downloaded completely (offline, unreachable, a timeout,
            HTTP error, body cut short on every attempt); the message says what happened, after how
            long and how much arrived. The ``.partial`` file is kept, so the next call resumes it.
        GHNLoadError: the file could not be written (disk full, permissions).
    """
    from huggingface_hub.utils import tqdm

    settings = settings or DownloadSettings.from_env()
    dst = Path(dst)
    partial = Path(partial) if partial is not None else dst.with_name(dst.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = _size(partial)
    total, received, attempts, failed, start, wait = None, 0, 0, 0, time.monotonic(), settings.backoff
    best = resumed_from  # the most bytes the partial file ever held: only going beyond it is progress
    if resumed_from:
        logger.info("resuming the download of %s from byte %s (%s)", url, resumed_from, partial)
    bar = tqdm(initial=resumed_from, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or dst.name, leave=False)
    try:
        while True:
            attempts += 1
            have = _size(partial)
            try:
                headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
                with _open(url, headers, settings, backend) as (status, response_headers, chunks, reason):
                    total = _start_body(status, reason, response_headers, url, partial, have)
                    if status != 206:
                        have = 0
                    bar.reset(total=total)
                    bar.update(have)
                    if total is None or have < total:
                        _write_body(chunks, partial, have, bar)
                done = _size(partial)
                received += done - have
                if total is not None and done < total:
                    raise _Failure("cut", "the server closed the connection before the end of the body")
                if total is not None and done > total:
                    raise _Failure("length", f"received {done:,} bytes, more than the {total:,} announced")
                os.replace(partial, dst)
                return DownloadResult(dst, done, resumed_from, received, attempts)
            except _Failure as failure:
                now = _size(partial)
                received += max(0, now - have)
                got, best = now > best, max(best, now)
                if failure.kind == "restart":  # a stale partial the server cannot continue: start again
                    with contextlib.suppress(FileNotFoundError):
                        partial.unlink()
                    if attempts < MAX_ATTEMPTS:
                        continue
                failed += 0 if got else 1
                if not failure.transient or failed > settings.retries or attempts >= MAX_ATTEMPTS:
                    raise _give_up(url, failure, settings, attempts, start, now, total, partial) from None
                if got:
                    wait = settings.backoff  # progress: the next failure waits as little as the first
                pause = min(max(wait, failure.retry_after), settings.max_backoff)
                logger.warning(
                    "downloading %s: %s (%s received so far); retrying in %s (%d of %d retries left)",
                    url,
                    _what(failure, settings),
                    _progress(now, total),
                    _secs(pause),
                    settings.retries - failed,
                    settings.retries,
                )
                time.sleep(pause)
                wait = min(wait * 2, settings.max_backoff)
    finally:
        bar.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _start_body(status: int, reason, headers: Mapping, url: str, partial: Path, have: int) -> int | None:
    """Check the status of an answer and prepare ``partial``; returns the file's full size if known."""
    if status == 416 and have:  # the range starts at or after the end: the partial is complete, or stale
        found = re.search(r"/(\d+)\s*$", headers.get("Content-Range", ""))
        if found and int(found.group(1)) == have:
            return have
        raise _Failure("restart", "the server cannot continue the partial file (HTTP 416)")
    if status in RETRY_STATUS:
        after = headers.get("Retry-After", "")
        detail = f"HTTP {status} {reason or ''}".strip()
        raise _Failure("http", detail, retry_after=float(after) if re.fullmatch(r"\d+(\.\d+)?", after) else 0.0)
    if status not in (200, 206):
        raise _Failure("http", f"HTTP {status} {reason or ''}".strip(), transient=False)
    length = headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        found = _content_range(headers.get("Content-Range"))
        if found is None or found[0] != have:
            raise _Failure("restart", f"the server answered another range ({headers.get('Content-Range')})")
        return found[1] if found[1] is not None else (None if length is None else have + length)
    if have:  # 200 to a Range request: the whole file comes again
        logger.info("%s ignores Range requests: downloading the whole file again", url)
    return length


def _write_body(chunks, partial: Path, have: int, bar) -> None:
    """Write the body to ``partial`` after its first ``have`` bytes, flushed piece by piece (a killed
    process leaves what arrived). Network errors from ``chunks`` pass through; a failed write is a
    :class:`GHNLoadError`."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open(partial, "r+b" if have else "wb"))
            if have:
                f.seek(have)
                f.truncate()
        except OSError as err:
            raise _write_error(partial, err) from err
        for chunk in chunks:
            try:
                f.write(chunk)
                f.flush()
            except OSError as err:
                raise _write_error(partial, err) from err
            bar.update(len(chunk))


def _write_error(partial: Path, err: OSError) -> GHNLoadError:
    return GHNLoadError(
        f"could not write the download to {partial} ({type(err).__name__}: {err}). Fix: free some space in that "
        "folder (or point GHNINIT_CACHE elsewhere) and retry; the bytes written so far are resumed."
    )


def _what(failure: _Failure, settings: DownloadSettings) -> str:
    if failure.kind == "connect-timeout":
        return f"no connection within the connect timeout of {_secs(settings.connect_timeout)}"
    if failure.kind == "read-timeout":
        return f"no data for the read timeout of {_secs(settings.read_timeout)}"
    if failure.kind == "connect":
        return f"could not connect ({failure.detail})"
    if failure.kind == "cut":
        return f"the connection was cut ({failure.detail})"
    return failure.detail


def _give_up(url, failure, settings, attempts, start, have, total, partial) -> SourceUnavailable:
    """The final error, saying what happened, after how long, how much arrived and how to fix it."""
    host = urlsplit(url).netloc
    took = f"{attempts} attempt{'s' if attempts > 1 else ''} in {time.monotonic() - start:.1f} s"
    kept = (
        f" The {have:,} bytes received are kept in {partial}; the next download resumes from there."
        if have and partial.exists()
        else ""
    )
    if failure.kind == "read-timeout":
        what = (
            f"timed out: {host} sent no data for {_secs(settings.read_timeout)} (the read timeout), "
            f"{took}, {_progress(have, total)} received."
        )
        fix = (
            f"check the network and proxy; on a slow link raise the read timeout, e.g. {TIMEOUT_ENV}="
            f"{max(60, int(settings.read_timeout * 3))} (and {RETRIES_ENV}=5)"
        )
    elif failure.kind == "connect-timeout":
        what = f"timed out: no connection to {host} within {_secs(settings.connect_timeout)} (the connect timeout), {took}."
        fix = (
            "check the network, firewall and proxy (HTTPS_PROXY); to wait longer, e.g. "
            f"{TIMEOUT_ENV}=30,{max(60, int(settings.read_timeout))}"
        )
    elif failure.kind == "connect":
        what = f"could not connect to {host} ({failure.detail}), {took}: the machine may be offline or need a proxy."
        fix = (
            "check the network and proxy (HTTPS_PROXY), or the mirror in GHNINIT_OFFICIAL_URL; on a machine without "
            "network, set GHNINIT_OFFLINE=1 and fill the cache on a connected one (python -m ghninit download NAME)"
        )
    elif failure.kind == "offline":
        what = f"offline mode is on ({failure.detail})."
        fix = "unset HF_HUB_OFFLINE, or fill the cache on a connected machine (python -m ghninit download NAME)"
    elif failure.kind in ("cut", "length"):
        what = f"download incomplete ({_progress(have, total)}): {failure.detail}, {took}."
        fix = f"retry (the download resumes); on a flaky link allow more retries, e.g. {RETRIES_ENV}=8"
    elif failure.transient:
        what = f"{host} answered {failure.detail}, {took}."
        fix = "retry later; the server or mirror has a problem"
    else:
        what = f"{host} answered {failure.detail}."
        fix = "check the URL (and GHNINIT_OFFICIAL_URL if set)"
    return SourceUnavailable(f"downloading {url} failed: {what}{kept} Fix: {fix}. Settings: {settings.describe()}.")


# -- Hub files: a bounded first contact before hf_hub_download -------------------------------------------


def _transport_failure(err: BaseException) -> str | None:
    """``"timeout"`` or ``"connect"`` for a network error of httpx or requests (by class name, so that
    either client works), else None (an HTTP answer, or something else)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {"TimeoutException", "Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutError"}:
        return "timeout"
    if names & {"ConnectError", "ConnectionError", "NetworkError", "RemoteProtocolError", "ProxyError"}:
        return "connect"
    return None


def probe_hub_file(url: str, token: str | bool | None = None, settings: DownloadSettings | None = None) -> None:
    """Ask the Hub for a file's metadata (one ``HEAD``) with ghninit's timeout and retries.

    ``hf_hub_download`` on a file that is not cached yet retries its metadata request with a
    fixed 60 s timeout when the first one times out, five times with backoff, so a stalled
    ``HF_ENDPOINT`` takes several minutes to end. This check ends it within ghninit's settings;
    an HTTP answer of any status passes (``hf_hub_download`` then explains it).

    Raises:
        SourceUnavailable: no answer within the read timeout, or no connection, on every attempt.
    """
    from huggingface_hub import get_hf_file_metadata

    settings = settings or DownloadSettings.from_env()
    start, wait = time.monotonic(), settings.backoff
    for attempt in range(1, settings.retries + 2):
        try:
            get_hf_file_metadata(url, token=token, timeout=settings.read_timeout)
            return
        except Exception as err:  # noqa: BLE001 - classified below; anything else is hf_hub_download's to explain
            kind = _transport_failure(err)
            if kind is None:
                return
            if attempt > settings.retries:
                host, took = urlsplit(url).netloc, f"{attempt} attempts in {time.monotonic() - start:.1f} s"
                what = (
                    f"timed out: {host} sent no answer for {_secs(settings.read_timeout)} (the read timeout), {took}"
                    if kind == "timeout"
                    else f"could not connect to {host} ({type(err).__name__}: {err}), {took}: the machine may be "
                    "offline or need a proxy"
                )
                raise SourceUnavailable(
                    f"asking {url} for the file failed: {what}. Fix: check the network, proxy and HF_ENDPOINT; on a "
                    f"slow link raise the timeout, e.g. {TIMEOUT_ENV}=60; on a machine without network set "
                    f"HF_HUB_OFFLINE=1 and fill the cache on a connected one. Settings: {settings.describe()}."
                ) from err
            logger.warning("asking %s: %s; retrying in %s", url, type(err).__name__, _secs(wait))
            time.sleep(wait)
            wait = min(wait * 2, settings.max_backoff)
