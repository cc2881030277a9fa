"""Measurements for docs/downloads.md (not a test): how long a stalled server takes to become a clear
error with the default settings, and how many bytes a download killed half-way fetches again.

Every server is on 127.0.0.1. Run from the repository root:

    python tests/download_timing.py stall-official   # GHNINIT_OFFICIAL_URL -> a socket that never answers
    python tests/download_timing.py stall-ghn3       # HF_ENDPOINT -> the same, for a GHN-3 name
    python tests/download_timing.py stall-hub-repo   # HF_ENDPOINT -> the same, for an org/name Hub repo
    python tests/download_timing.py killed           # a process killed at 50 % of a 19.5 MB file, then a rerun

Each prints one JSON line. The stall cases take minutes (they wait for the default timeouts) but
use no CPU; ``killed`` takes seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
sys.path[:0] = [str(REPO_DIR), str(TESTS_DIR)]

_LOAD = """
import json, time, ghninit
start = time.monotonic()
try:
    ghninit.load_ghn({source!r})
    print("@@", json.dumps({{"ok": True, "seconds": round(time.monotonic() - start, 1)}}))
except Exception as err:
    print("@@", json.dumps({{"ok": False, "seconds": round(time.monotonic() - start, 1),
                            "type": type(err).__name__, "message": str(err)}}))
"""


def _clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GHNINIT_"))}
    env.update(
        HF_HOME=str(tmp / "hf"),
        GHNINIT_CACHE=str(tmp / "ghninit"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPATH=str(REPO_DIR),
    )
    env.update(extra)
    return env


def stall(case: str) -> dict:
    """Load a name whose source is a socket that accepts connections and never answers."""
    with socket.socket() as stalled, tempfile.TemporaryDirectory() as tmp:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(128)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        source, extra = {
            "stall-official": ("imagenet", {"GHNINIT_OFFICIAL_URL": url + "/mirror"}),
            "stall-ghn3": ("ghn3-t", {"HF_ENDPOINT": url}),
            "stall-hub-repo": ("test-org/some-repo", {"HF_ENDPOINT": url}),
        }[case]
        env = _clean_env(Path(tmp), **extra)
        out = subprocess.run(
            [sys.executable, "-c", _LOAD.format(source=source)], env=env, capture_output=True, text=True, timeout=1200
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("@@ ")), None)
        result = json.loads(line[3:]) if line else {"ok": False, "stderr": out.stderr[-2000:]}
        return {"case": case, "source": source, **result}


def killed() -> dict:
    """Kill a loader when the server has sent half the file; rerun it in a fresh process; count the bytes."""
    from hub_server import HubServer, Worker, worker_env
    from test_official import REPO, write_reference_checkpoint

    from ghninit.zoo.cache import git_blob_sha1
    from ghninit.zoo.official import PPUDA_COMMIT

    with tempfile.TemporaryDirectory() as tmp, HubServer() as server:
        tmp = Path(tmp)
        checkpoint = tmp / "test_resume_ghn2.pt"
        write_reference_checkpoint(checkpoint, "ghn2", seed=1)
        size, repo_path = checkpoint.stat().st_size, f"checkpoints/{checkpoint.name}"
        base = server.add_raw(REPO, PPUDA_COMMIT, repo_path, checkpoint.read_bytes())
        path = f"/raw/{REPO}/{PPUDA_COMMIT}/{repo_path}"
        env = worker_env(server, tmp / "hf", offline=False, GHNINIT_OFFICIAL_URL=base)
        register = dict(
            name="test-resume", variant="ghn2", dataset="cifar10", path=repo_path, blob_sha1=git_blob_sha1(checkpoint)
        )

        server.slow_chunk, server.slow_delay = 256 * 1024, 0.05  # ~5 MB/s
        server.set_fault("slow")
        first = Worker(env, tmp / "first.log")
        assert first.read() == {"ready": True} and first.ask("register", hub=None, **register)["ok"]
        first.send("load", source="test-resume")
        while server.sent.get(path, 0) < size // 2:
            time.sleep(0.01)
        first.proc.kill()
        first.proc.wait()
        first.close()
        time.sleep(0.2)
        sent_first = server.sent[path]
        partials = list((tmp / "hf" / "ghninit" / "ghns" / ".tmp").rglob("*.partial"))
        kept = partials[0].stat().st_size if partials else 0

        server.set_fault(None)
        server.reset()
        second = Worker(env, tmp / "second.log")
        assert second.read() == {"ready": True} and second.ask("register", hub=None, **register)["ok"]
        start = time.monotonic()
        answer = second.ask("load", source="test-resume")
        took = time.monotonic() - start
        second.close()
        time.sleep(0.2)
        sent_second = server.sent.get(path, 0)
        return {
            "case": "killed",
            "file_bytes": size,
            "sent_before_kill": sent_first,
            "kept_in_partial": kept,
            "second_run_range": server.range_headers,
            "sent_second_run": sent_second,
            "re_downloaded_bytes": sent_first + sent_second - size,
            "second_run_ok": answer["ok"],
            "second_run_seconds": round(took, 2),
            "partials_left": [str(p) for p in (tmp / "hf" / "ghninit" / "ghns" / ".tmp").rglob("*")],
        }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["stall-official", "stall-ghn3", "stall-hub-repo", "killed"])
    case = parser.parse_args().case
    print(json.dumps(killed() if case == "killed" else stall(case)), flush=True)
