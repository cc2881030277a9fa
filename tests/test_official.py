"""Known names from the official reference checkpoints: pinned, downloaded, verified, converted, cached.

A local server on 127.0.0.1 (:class:`hub_server.HubServer`) stands in for GitHub's raw-file
endpoint through ``GHNINIT_OFFICIAL_URL``. The files it serves are random GHN-2, GHN-1 and MLP
GHNs written here in the reference's ``.pt`` format (``state_dict``, ``optimzer``, ``epoch``,
``config``), and registered as known GHNs pinned by path and git blob SHA-1 with
:func:`ghninit.zoo.registry.register_ghn`: the checks are the real ones, only the pinned table differs.
Most tests run in this process (ghninit reads ``GHNINIT_*`` at each call); huggingface_hub's
``HF_HUB_OFFLINE`` and concurrent loading run in worker processes. No other address is used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_DIR
from hub_server import HubServer, Worker, seeded_resnet18, state_digest, worker_env

import ghninit
from ghninit.errors import GHNLoadError, SourceUnavailable
from ghninit.ghn.presets import PRESETS
from ghninit.training.trainer import TrainConfig
from ghninit.zoo.cache import file_sha256, git_blob_sha1
from ghninit.zoo.hub import ghn_from_reference_checkpoint, load_ghn
from ghninit.zoo.official import PPUDA_COMMIT, OfficialFile
from ghninit.zoo.registry import KNOWN_GHNS, ConvertedSource, HubWeights, KnownGHN, register_ghn, variant_of

# The table of the issue, read from the pinned commit's tree and README ("Available GHNs").
OFFICIAL = {
    "imagenet": ("ghn2-imagenet", "checkpoints/ghn2_imagenet.pt", "7b5d6733e9fdf0069bc6186cad3a0b1b54fda68d"),
    "cifar10": ("ghn2-cifar10", "checkpoints/ghn2_cifar10.pt", "4f290e0fad1b73066eeabb50be52e0c377d0b15b"),
    "ghn1-imagenet": ("ghn1-imagenet", "checkpoints/ghn1_imagenet.pt", "985ebeb350c4ae79e0553d88c07d986fa69c227b"),
    "ghn1-cifar10": ("ghn1-cifar10", "checkpoints/ghn1_cifar10.pt", "0c97a283aefc0445dd357c08f1b36698149b8013"),
    "mlp-cifar10": ("mlp-cifar10", "checkpoints/mlp_cifar10.pt", "3a987c98b437fd2dfc603668a846f2b632ed28a3"),
}
PUBLISHED = {  # ResNet-50 / best TEST architecture (index)
    "ghn2-imagenet": ("5.3", "48.3", 85),
    "ghn2-cifar10": ("58.6", "77.1", 210),
    "ghn1-imagenet": ("6.9", "32.1", 295),
    "ghn1-cifar10": ("19.2", "59.9", 179),
    "mlp-cifar10": ("17.7", "60.2", 167),
}
REPO = "facebookresearch/ppuda"
VARIANTS = ("ghn2", "ghn1", "mlp")


def reference_config(variant: str) -> dict:
    """A CIFAR-10 GHN config of ``variant`` with the reference's keys (``max_shape`` a tuple, as it saves it)."""
    arch = {k: PRESETS[variant][k] for k in ("hypernet", "ve", "weight_norm", "layernorm")}
    return TrainConfig.for_dataset("cifar10", **arch).ghn_kwargs()


def write_reference_checkpoint(path: Path, variant: str, seed: int, config_extra: object = None) -> None:
    """Random weights of ``variant`` saved as the reference saves a GHN: ``{'state_dict', 'optimzer' (sic),
    'epoch', 'config'}``, with a real Adam state."""
    config = reference_config(variant)
    torch.manual_seed(seed)
    ghn = ghninit.GHN2(**config)
    optimizer = torch.optim.Adam(ghn.parameters(), lr=1e-3)
    for p in ghn.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    if config_extra is not None:
        config = {**config, "extra": config_extra}
    torch.save(
        {"state_dict": ghn.state_dict(), "optimzer": optimizer.state_dict(), "epoch": 299, "config": config}, path
    )


def entry(name: str, variant: str, path: str, blob_sha1: str, hub: HubWeights | None = None) -> KnownGHN:
    return KnownGHN(name, variant, "cifar10", (*((hub,) if hub else ()), OfficialFile(path, blob_sha1)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server with one random checkpoint per variant, the files, and their expected GHNs."""
    tmp = tmp_path_factory.mktemp("official")
    with HubServer() as server:
        ns = SimpleNamespace(server=server, tmp=tmp, files={}, digests={}, base=None)
        for seed, variant in enumerate(VARIANTS):
            path = tmp / f"test_{variant}_cifar10.pt"
            write_reference_checkpoint(path, variant, seed)
            repo_path = f"checkpoints/{path.name}"
            ns.base = server.add_raw(REPO, PPUDA_COMMIT, repo_path, path.read_bytes())
            ns.files[variant] = SimpleNamespace(
                name=f"test-{variant}-cifar10", local=path, path=repo_path, blob=git_blob_sha1(path)
            )
            ns.digests[variant] = state_digest(ghn_from_reference_checkpoint(path))
        yield ns


@pytest.fixture
def registered(served, monkeypatch, tmp_path):
    """The test GHNs registered in this process, the server as official endpoint, an empty cache."""
    saved = dict(KNOWN_GHNS)
    for variant, f in served.files.items():
        register_ghn(entry(f.name, variant, f.path, f.blob))
    monkeypatch.setenv("GHNINIT_OFFICIAL_URL", served.base)
    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    for var in ("GHNINIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    served.server.reset()
    served.server.corrupt, served.server.raw_delay = None, 0.0
    try:
        yield SimpleNamespace(**vars(served), cache=tmp_path / "cache")
    finally:
        KNOWN_GHNS.clear()
        KNOWN_GHNS.update(saved)
        served.server.corrupt = None


def raw_gets(server: HubServer) -> list[str]:
    return [p for p in server.paths("GET") if p.startswith("/raw/")]


def cached_files(root: Path) -> list[Path]:
    """Files in a cache other than lock files (which hold no data)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock") if root.exists() else []


# -- the pinned table ------------------------------------------------------------------------------


def test_every_official_name_is_pinned_to_the_reference_commit(monkeypatch):
    monkeypatch.delenv("GHNINIT_OFFICIAL_URL", raising=False)
    for name, (canonical, path, blob) in OFFICIAL.items():
        known = KNOWN_GHNS[name]
        assert known.name == canonical and KNOWN_GHNS[canonical] is known
        assert [s.kind for s in known.sources] == ["official"], "no Hub repo is pinned until one is published"
        source = known.sources[0]
        assert (source.repo, source.commit, source.path, source.blob_sha1) == (REPO, PPUDA_COMMIT, path, blob)
        assert source.url() == f"https://raw.githubusercontent.com/{REPO}/{PPUDA_COMMIT}/{path}"
        assert source.license == "MIT"
        published = known.published
        assert (published.resnet50, published.best, published.best_index) == PUBLISHED[canonical]
        assert known.variant == canonical.split("-")[0] and known.dataset == canonical.split("-")[1]
    assert PPUDA_COMMIT == "4673a42507a9dcd0a5ae04e74599e8c92af689b9"
    monkeypatch.setenv("GHNINIT_OFFICIAL_URL", "http://127.0.0.1:9/mirror/")
    assert KNOWN_GHNS["imagenet"].sources[0].url() == "http://127.0.0.1:9/mirror/checkpoints/ghn2_imagenet.pt"


def test_git_blob_sha1_is_what_git_computes(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    for data in (b"", b"hello\n", bytes(range(256)) * 5000):
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        expected = subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert git_blob_sha1(path) == expected.stdout.strip()


def test_register_refuses_to_overwrite_a_name_silently():
    with pytest.raises(ValueError, match="already a known GHN"):
        register_ghn(entry("imagenet", "ghn2", "x.pt", "0" * 40))
    with pytest.raises(ValueError, match="variant"):
        register_ghn(KnownGHN("x", "ghn9", "cifar10", (OfficialFile("x.pt", "0" * 40),)))
    with pytest.raises(ValueError, match="neither a HubWeights nor a ConvertedSource"):
        register_ghn(KnownGHN("x", "ghn2", "cifar10", ("https://example.org/x.pt",)))
    assert "x" not in KNOWN_GHNS


# -- download, verify, convert, cache --------------------------------------------------------------


def test_first_load_downloads_verifies_converts_then_loads_from_cache_only(registered):
    server, f = registered.server, registered.files["ghn2"]
    ghn = load_ghn(f.name)
    assert state_digest(ghn) == registered.digests["ghn2"]
    assert raw_gets(server) == [urllib.parse.urlsplit(f"{registered.base}/{f.path}").path]
    assert server.requests == [("GET", raw_gets(server)[0])], "one request: the file itself"

    folder = registered.cache / "ghns" / f.name / f"official-{f.blob}"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "provenance.json",
    ]
    assert cached_files(registered.cache) == sorted(folder.iterdir()), "the .pt itself is not kept"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert (provenance["commit"], provenance["path"], provenance["blob_sha1"]) == (PPUDA_COMMIT, f.path, f.blob)
    assert provenance["url"] == f"{registered.base}/{f.path}" and provenance["license"] == "MIT"
    card = (folder / "README.md").read_text()
    for needle in (f"https://github.com/{REPO}", PPUDA_COMMIT, f.path, f.blob, provenance["weights_sha256"], "MIT"):
        assert needle in card, needle

    server.reset()
    assert state_digest(load_ghn(f.name)) == registered.digests["ghn2"]
    report = ghninit.initialize(seeded_resnet18(), dataset=f.name)
    assert report.predicted and server.requests == [], "a cached GHN needs no request"
    assert ghninit.download_ghn(f.name) == folder

    (row,) = [r for r in ghninit.list_ghns() if r["name"] == f.name]
    assert row["cached"] and row["location"] == str(folder) and not row["parameters_expected"]
    assert row["parameters"] == provenance["parameters"] and row["size_mb"] > 0 and row["variant"] == "GHN-2"
    assert server.requests == [], "list_ghns makes no request"

    # A cached copy damaged later is an error with the fix, never loaded.
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(GHNLoadError, match=r"damaged(.|\n)*force_download=True"):
        load_ghn(f.name)
    assert state_digest(load_ghn(f.name, force_download=True)) == registered.digests["ghn2"]
    assert len(raw_gets(server)) == 1


def test_convert_ppuda_recognises_a_pinned_file_by_its_blob_sha1(registered, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_ppuda", REPO_DIR / "hub" / "convert_ppuda.py")
    convert_ppuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_ppuda)
    f = registered.files["ghn1"]
    summary = convert_ppuda.convert(f.local, tmp_path / "out")
    assert summary["name"] == f.name and summary["official"] and summary["checks"]
    card = (tmp_path / "out" / "README.md").read_text()
    for needle in (
        f"https://github.com/{REPO}",
        PPUDA_COMMIT,
        f.path,
        f.blob,
        summary["weights_sha256"],
        "MIT",
        "GHN-1",
    ):
        assert needle in card, needle
    assert "not the pinned official file" not in card and str(tmp_path) not in card
    assert registered.server.requests == [], "a local file is converted without any request"


@pytest.mark.parametrize("variant", ["ghn1", "mlp"])
def test_ghn1_and_mlp_load_into_their_variant_from_the_checkpoint_config(registered, variant):
    f = registered.files[variant]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ghn = load_ghn(f.name)
    assert not [w for w in caught if "listed as" in str(w.message)], "the table and the config agree"
    config = reference_config(variant)
    assert ghn.config == {**config, "max_shape": list(config["max_shape"])}
    assert variant_of(ghn.config) == variant and state_digest(ghn) == registered.digests[variant]
    direct = ghn_from_reference_checkpoint(f.local)
    by_name, expected = seeded_resnet18(), seeded_resnet18()
    report = ghninit.initialize(by_name, dataset=f.name)
    ghninit.initialize(expected, ghn=direct)
    assert len(report.predicted) > 50 and state_digest(by_name) == state_digest(expected)


def test_a_table_variant_that_the_config_contradicts_is_loaded_as_the_config_says_with_a_warning(registered):
    f = registered.files["ghn1"]
    register_ghn(entry("test-mislabelled", "mlp", f.path, f.blob))
    with pytest.warns(UserWarning, match="listed as mlp.*describes ghn1"):
        ghn = load_ghn("test-mislabelled")
    assert variant_of(ghn.config) == "ghn1"


# flip: bytes changed, same size; short: half the file served as if it were all of it. A body cut short
# (fewer bytes than announced) is not a hash error but an incomplete download: tests/test_download_faults.py.
@pytest.mark.parametrize("damage", ["flip", "short"])
def test_a_tampered_or_truncated_file_is_rejected_with_the_hash_error_and_nothing_is_cached(registered, damage):
    server, f = registered.server, registered.files["ghn2"]
    server.corrupt = damage
    damaged, _ = server._raw_body(f.local.read_bytes())
    (registered.tmp / "damaged.bin").write_bytes(damaged)
    actual = git_blob_sha1(registered.tmp / "damaged.bin")
    with pytest.raises(GHNLoadError) as err:
        load_ghn(f.name)
    assert not isinstance(err.value, SourceUnavailable), "a hash mismatch never falls back to anything"
    for needle in (
        f.path,
        f"expected {f.blob}",
        f"git blob SHA-1 is {actual}",
        f"{registered.base}/{f.path}",
        "deleted",
    ):
        assert needle in str(err.value), needle
    assert cached_files(registered.cache) == [] and not (registered.cache / "ghns" / f.name).exists()

    server.corrupt = None  # once the server is repaired, the same call works
    assert state_digest(load_ghn(f.name)) == registered.digests["ghn2"]


def test_a_file_weights_only_refuses_names_the_type_and_is_never_unpickled(registered):
    path = registered.tmp / "with_namespace.pt"
    write_reference_checkpoint(path, "ghn2", 5, config_extra=argparse.Namespace(note="a class instance"))
    registered.server.add_raw(REPO, PPUDA_COMMIT, "checkpoints/with_namespace.pt", path.read_bytes())
    register_ghn(entry("test-namespace", "ghn2", "checkpoints/with_namespace.pt", git_blob_sha1(path)))
    with pytest.raises(GHNLoadError, match=r"type `argparse\.Namespace`(.|\n)*weights_only=True") as err:
        load_ghn("test-namespace")
    assert not isinstance(err.value, SourceUnavailable)
    assert cached_files(registered.cache) == []


@dataclass(frozen=True)
class FakeSource:
    """A source of another kind, made of the five members a converted source needs."""

    label: str
    fails: bool
    calls: list

    kind = "fake"

    @property
    def cache_key(self) -> str:
        return f"fake-{self.label}"

    def describe(self) -> str:
        return f"fake source {self.label}"

    def provenance(self) -> dict:
        return {"source": "fake", "license": "MIT"}

    def fetch(self, work: Path, token=None) -> Path:
        self.calls.append(self.label)
        if self.fails:
            raise GHNLoadError(f"{self.label}: its hash does not match")
        return work

    def convert(self, path: Path) -> torch.nn.Module:
        torch.manual_seed(0)
        return ghninit.GHN2(**reference_config("ghn2"))


def test_a_new_kind_of_source_plugs_in_and_a_failed_verification_stops_the_list(registered):
    calls = []
    assert isinstance(FakeSource("x", False, calls), ConvertedSource)
    register_ghn(
        KnownGHN("test-fake", "ghn2", "cifar10", (FakeSource("bad", True, calls), FakeSource("ok", False, calls)))
    )
    with pytest.raises(GHNLoadError, match="bad: its hash does not match"):
        load_ghn("test-fake")
    assert calls == ["bad"], "after a failed verification no other source is tried"

    register_ghn(KnownGHN("test-fake", "ghn2", "cifar10", (FakeSource("ok", False, calls),)), replace=True)
    assert load_ghn("test-fake").config["hypernet"] == "gatedgnn"
    assert (registered.cache / "ghns" / "test-fake" / "fake-ok" / "model.safetensors").is_file()


def test_offline_without_cache_names_every_source_and_how_to_prefill(registered, monkeypatch):
    monkeypatch.setenv("GHNINIT_OFFLINE", "1")
    f = registered.files["ghn2"]
    with pytest.raises(GHNLoadError) as err:
        load_ghn(f.name)
    message = str(err.value)
    for needle in (
        f"official file {f.path} of {REPO} at commit {PPUDA_COMMIT}",
        f"{registered.base}/{f.path}",
        "offline mode is on",
        str(registered.cache),
        f"python -m ghninit download {f.name}",
        f"download_ghn('{f.name}')",
        "GHNINIT_CACHE=",
    ):
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert registered.server.requests == []


def test_offline_with_a_cache_filled_by_download_ghn_works(registered, monkeypatch):
    f = registered.files["mlp"]
    folder = ghninit.download_ghn(f.name)
    registered.server.reset()
    monkeypatch.setenv("GHNINIT_OFFLINE", "1")
    assert state_digest(load_ghn(f.name)) == registered.digests["mlp"]
    assert ghninit.download_ghn(f.name) == folder and registered.server.requests == []


def test_command_line_download_and_list(registered, capsys):
    from ghninit.__main__ import main

    f = registered.files["ghn1"]
    assert main(["download", f.name]) == 0
    assert str(registered.cache / "ghns" / f.name) in capsys.readouterr().out
    assert main(["download", "no-such-ghn"]) == 1
    assert "neither a shipped GHN" in capsys.readouterr().err
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[f.name]["cached"] and rows[f.name]["variant"] == "GHN-1"
    assert main(["list"]) == 0
    assert f"{f.name}: GHN-1, CIFAR-10" in capsys.readouterr().out


def test_python_m_ghninit_list_shows_every_name(tmp_path):
    env = {"GHNINIT_CACHE": str(tmp_path), "PYTHONPATH": str(REPO_DIR), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "ghninit", "list", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    ghn3 = {"ghn3-t", "ghn3-s", "ghn3-l", "ghn3-xl"}  # from the Hub (tests/test_ghn3_weights.py)
    assert set(rows) == {"cifar10-mini", *(canonical for canonical, _, _ in OFFICIAL.values()), *ghn3}
    assert all(rows[n]["source"].startswith("Hub file SamsungSAILMontreal/ghn3@main:") for n in ghn3)
    assert rows["cifar10-mini"]["source"] == "shipped in the package" and rows["cifar10-mini"]["cached"]
    for canonical, path, _ in OFFICIAL.values():
        row = rows[canonical]
        assert row["source"] == f"official file {REPO}@{PPUDA_COMMIT[:7]}:{path}" and not row["cached"]
        assert row["parameters_expected"] and row["parameters"] > 10**6
        resnet50, best, index = PUBLISHED[canonical]
        assert f"ResNet-50 {resnet50}, best TEST net (#{index}) {best}" in row["accuracy"]
    assert rows["ghn2-imagenet"]["aliases"] == ["imagenet"] and rows["ghn2-cifar10"]["aliases"] == ["cifar10"]
    assert {rows[n]["variant"] for n in ("ghn1-imagenet", "ghn1-cifar10", "mlp-cifar10")} == {"GHN-1", "MLP"}
    help_ = subprocess.run([sys.executable, "-m", "ghninit", "list", "--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--json" in help_.stdout


# -- processes: huggingface_hub's HF_HUB_OFFLINE, a Hub source first, and concurrent loaders -------------


def _register(worker: Worker, served, variant: str, hub: dict | None = None) -> None:
    f = served.files[variant]
    answer = worker.ask(
        "register", name=f.name, variant=variant, dataset="cifar10", path=f.path, blob_sha1=f.blob, hub=hub
    )
    assert answer["ok"], answer


def test_hub_source_first_falls_back_to_the_official_file_and_hf_hub_offline(served, tmp_path):
    server, f = served.server, served.files["ghn2"]
    hub = {"repo_id": "test-org/not-published", "revision": "a" * 40, "sha256": None, "source": "x.pt"}
    online = Worker(
        worker_env(server, tmp_path / "hf", offline=False, GHNINIT_OFFICIAL_URL=served.base), tmp_path / "on.log"
    )
    offline = Worker(
        worker_env(server, tmp_path / "hf", offline=True, GHNINIT_OFFICIAL_URL=served.base), tmp_path / "off.log"
    )
    try:
        assert online.read() == {"ready": True} and offline.read() == {"ready": True}
        for worker in (online, offline):
            _register(worker, served, "ghn2", hub)

        # HF_HUB_OFFLINE=1 and nothing cached: both sources are named, nothing is requested.
        server.reset()
        answer = offline.ask("load", source=f.name)
        assert not answer["ok"] and answer["type"] == "GHNLoadError", answer
        for needle in (
            "1. Hub repo test-org/not-published",
            f"2. official file {f.path}",
            "HF_HUB_OFFLINE",
            "download",
        ):
            assert needle in answer["message"], f"{needle!r} not in:\n{answer['message']}"
        assert server.requests == []

        # Online: the Hub repo does not exist, so the official file is used (one GET of it).
        server.reset()
        answer = online.ask("load", source=f.name)
        assert answer["ok"] and answer["digest"] == served.digests["ghn2"], answer
        assert any("/test-org/not-published/" in p for p in server.paths()) and len(raw_gets(server)) == 1

        # HF_HUB_OFFLINE=1 with the cache the online process filled: loads with no request.
        server.reset()
        answer = offline.ask("load", source=f.name)
        assert answer["ok"] and answer["digest"] == served.digests["ghn2"], answer
        assert server.requests == []
    finally:
        for worker in (online, offline):
            worker.close()


def test_concurrent_processes_download_once_and_agree(served, tmp_path):
    server, f = served.server, served.files["mlp"]
    env = worker_env(server, tmp_path / "hf", offline=False, GHNINIT_OFFICIAL_URL=served.base)
    workers = [Worker(env, tmp_path / f"rank{i}.log") for i in range(3)]
    try:
        for worker in workers:
            assert worker.read() == {"ready": True}
            _register(worker, served, "mlp")
        server.reset()
        server.raw_delay = 1.5  # the download takes long enough for every process to arrive meanwhile
        start = time.monotonic()
        for worker in workers:
            worker.send("load", source=f.name)
        answers = [worker.read() for worker in workers]
    finally:
        server.raw_delay = 0.0
        for worker in workers:
            worker.close()
    assert all(a["ok"] for a in answers), answers
    assert {a["digest"] for a in answers} == {served.digests["mlp"]}
    assert len(raw_gets(server)) == 1, f"downloaded {len(raw_gets(server))} times"
    assert time.monotonic() - start >= 1.5
    cache = tmp_path / "hf" / "ghninit" / "ghns"
    assert [p.name for p in (cache / f.name).iterdir()] == [f"official-{f.blob}"], "one folder, no partial copies"
    assert not list((cache / ".tmp").iterdir())
