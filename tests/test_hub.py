"""Hub weights: converting reference checkpoints, loading them, and the Hub download path.

Hub scenarios run against :class:`hub_server.HubServer` on 127.0.0.1 through worker processes
started with ``HF_ENDPOINT``/``HF_HOME``/``HF_HUB_OFFLINE`` set (huggingface_hub reads them when it
is imported), so they exercise exactly what a user's process does. No network is used.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_DIR, reference_file, requires_shared
from hub_server import HubServer, Worker, state_digest, worker_env
from parity import build_model, compare, load_fixture
from safetensors.torch import load_file, save_file

import ghninit
from ghninit.zoo.hub import GHNLoadError, load_ghn

REPO_IMAGENET = "test-org/ghn2-imagenet"
REPO_CIFAR = "test-org/ghn2-cifar10"


def _script(name: str):
    """Import hub/<name>.py (maintainer scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"hub_{name}", REPO_DIR / "hub" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both random reference checkpoints converted with hub/convert_ppuda.py."""
    convert = _script("convert_ppuda")
    out = {}
    for dataset in ("imagenet", "cifar10"):
        src = reference_file(f"ghn2_{dataset}_random.pt")
        folder = tmp_path_factory.mktemp("converted") / f"ghn2-{dataset}"
        summary = convert.convert(src, folder)
        out[dataset] = SimpleNamespace(src=src, folder=folder, summary=summary, digest=state_digest(load_ghn(folder)))
    return out


# -- conversion and local loading ------------------------------------------------------------


@requires_shared
def test_convert_writes_hub_layout_and_model_card(converted):
    for dataset, conv in converted.items():
        assert sorted(p.name for p in conv.folder.iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "provenance.json",
        ]
        direct = ghninit.zoo.hub.ghn_from_reference_checkpoint(conv.src)
        assert json.loads((conv.folder / "config.json").read_text()) == direct.config
        assert conv.digest == state_digest(direct), "converted tensors differ from the .pt"
        assert conv.summary["checks"] and all("identical" in line for line in conv.summary["checks"])
        card = (conv.folder / "README.md").read_text()
        source_sha256 = _script("convert_ppuda").sha256_file(conv.src)
        for needle in (
            "arxiv.org/abs/2110.13100",  # paper
            "license: mit",  # license (card metadata) ...
            "MIT: the license of the source repository",  # ... and text
            "DeepNets-1M",  # training data
            "ImageNet" if dataset == "imagenet" else "CIFAR-10",
            "5.3" if dataset == "imagenet" else "58.6",  # published ResNet-50 accuracy
            "48.3" if dataset == "imagenet" else "77.1",
            source_sha256,
            conv.summary["weights_sha256"],
            "library_name: ghninit",
        ):
            assert needle in card, f"{dataset} model card lacks {needle!r}"
        official = ghninit.zoo.registry.KNOWN_GHNS[dataset].sources[-1]
        assert conv.summary["name"] == f"ghn2-{dataset}" and not conv.summary["official"]
        # a random fixture is not the official file: the card says so, naming both blob SHA-1s
        assert "is not the pinned official file" in card and official.blob_sha1 in card


@requires_shared
@pytest.mark.parametrize("name", ["imagenet__resnet18", "cifar10__resnet18"])
def test_converted_folder_predicts_like_the_reference(converted, name):
    fixture = load_fixture(reference_file(f"{name}.json"))
    model = build_model(fixture)
    ghn = load_ghn(converted[fixture["dataset"]].folder)
    report = ghninit.initialize(model, ghn=ghn, keep_classifier=False)
    predicted = {n: p for n, p in model.named_parameters() if n in set(report.predicted)}
    problems = compare(predicted, fixture)
    assert not problems, "\n".join(problems[:20])


@requires_shared
def test_local_sources(converted, tmp_path):
    conv = converted["cifar10"]
    assert state_digest(load_ghn(conv.folder / "model.safetensors")) == conv.digest  # config.json beside it
    assert state_digest(load_ghn(conv.src)) == conv.digest  # reference .pt, weights_only
    assert state_digest(load_ghn(reference_file("ghn2_cifar10_random.safetensors"))) == conv.digest

    truncated = tmp_path / "truncated"
    shutil.copytree(conv.folder, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GHNLoadError, match="truncated"):
        load_ghn(truncated)
    with pytest.raises(GHNLoadError, match="truncated"):
        load_ghn(truncated / "model.safetensors")

    no_config = tmp_path / "no_config"
    shutil.copytree(conv.folder, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(GHNLoadError, match="missing config.json"):
        load_ghn(no_config)

    bad_json = tmp_path / "bad_json"
    shutil.copytree(conv.folder, bad_json)
    (bad_json / "config.json").write_text('{"hid": 32,')
    for path in (bad_json, bad_json / "model.safetensors"):
        with pytest.raises(GHNLoadError, match="not .*JSON"):
            load_ghn(path)
    tensors = load_file(str(conv.folder / "model.safetensors"))
    save_file(tensors, str(tmp_path / "bad_meta.safetensors"), metadata={"config": "[1, 2"})
    with pytest.raises(GHNLoadError, match="'config' entry of its safetensors metadata is not valid JSON"):
        load_ghn(tmp_path / "bad_meta.safetensors")

    wrong = tmp_path / "wrong_config"  # CIFAR weights with the ImageNet config: no silent partial load
    shutil.copytree(conv.folder, wrong)
    shutil.copy(converted["imagenet"].folder / "config.json", wrong / "config.json")
    with pytest.raises(GHNLoadError, match="do not match"):
        load_ghn(wrong)

    with pytest.raises(GHNLoadError, match="local path"):
        load_ghn(conv.folder, revision="main")
    with pytest.raises(GHNLoadError, match="neither a shipped GHN .*, nor a known GHN"):
        load_ghn(tmp_path / "does-not-exist.safetensors")


# -- the Hub download path -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(converted, tmp_path_factory):
    """A Hub on 127.0.0.1 with two repos, and an online and an offline worker sharing one HF_HOME.

    ``test-org/ghn2-imagenet``: commit ``old`` (the converted ImageNet GHN) and ``main`` (other
    weights); ``test-org/ghn2-cifar10``: ``main`` (the converted CIFAR-10 GHN).
    """
    tmp = tmp_path_factory.mktemp("hub")
    other = tmp / "other-weights"
    config = json.loads((converted["imagenet"].folder / "config.json").read_text())
    torch.manual_seed(1)
    ghninit.GHN2(**config).save_pretrained(other, config=config)
    with HubServer() as server:
        ns = SimpleNamespace(server=server, hf_home=tmp / "hf_home", tmp=tmp)
        ns.old = server.add_commit(REPO_IMAGENET, converted["imagenet"].folder, branch=None)
        ns.new = server.add_commit(REPO_IMAGENET, other, branch="main")
        ns.cifar = server.add_commit(REPO_CIFAR, converted["cifar10"].folder, branch="main")
        ns.digest_old, ns.digest_new = converted["imagenet"].digest, state_digest(load_ghn(other))
        ns.digest_cifar = converted["cifar10"].digest
        ns.sha256_old = converted["imagenet"].summary["weights_sha256"]
        ns.online = Worker(worker_env(server, ns.hf_home, offline=False), tmp / "online.log")
        ns.offline = Worker(worker_env(server, ns.hf_home, offline=True), tmp / "offline.log")
        try:
            assert ns.online.read() == {"ready": True} and ns.offline.read() == {"ready": True}
            yield ns
        finally:
            for worker in (ns.online, ns.offline):  # both workers exit at once
                worker.proc.stdin.close()
            ns.online.close()
            ns.offline.close()


def _ok(answer: dict) -> dict:
    assert answer["ok"], f"{answer.get('type')}: {answer.get('message')}"
    return answer


def _fails(answer: dict, *needles: str) -> str:
    assert not answer["ok"], f"expected an error, got {answer}"
    assert answer["type"] == "GHNLoadError", answer
    for needle in needles:
        assert needle in answer["message"], f"{needle!r} not in error message:\n{answer['message']}"
    return answer["message"]


@requires_shared
def test_hub_download_cache_pinned_revision_and_offline(hub):
    server, online, offline = hub.server, hub.online, hub.offline
    pin = {"repo_id": REPO_IMAGENET, "revision": hub.old, "sha256": hub.sha256_old, "source": "x.pt"}

    # A known name pinned to a commit: downloaded once into HF_HOME ...
    _ok(online.ask("pin", name="imagenet", **pin))
    server.reset()
    assert _ok(online.ask("load", source="imagenet"))["digest"] == hub.digest_old
    assert sorted(server.requests) == sorted(
        [
            *(
                (method, f"/{REPO_IMAGENET}/resolve/{hub.old}/{name}")
                for method in ("HEAD", "GET")
                for name in ("config.json", "model.safetensors")
            ),
            ("HEAD", f"/{REPO_IMAGENET}/resolve/{hub.old}/config.json"),  # ghninit's timed probe before the download
        ]
    ), "only the pinned commit's two files are fetched"
    snapshot = hub.hf_home / "hub" / "models--test-org--ghn2-imagenet" / "snapshots" / hub.old
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "config.json").is_file()

    # ... then served from the cache without any request, also by initialize(dataset=...).
    server.reset()
    assert _ok(online.ask("load", source="imagenet"))["digest"] == hub.digest_old
    fixture = str(reference_file("imagenet__resnet18.json"))
    assert _ok(online.ask("initialize", fixture=fixture, dataset="imagenet"))["problems"] == []
    assert server.requests == [], "a pinned, cached GHN needs no request"

    # A repo id without revision follows main (other weights) and revalidates with HEAD only.
    assert _ok(online.ask("load", source=REPO_IMAGENET))["digest"] == hub.digest_new
    assert {p.split("/resolve/")[1].split("/")[0] for p in server.paths()} == {"main"}
    server.reset()
    assert _ok(online.ask("load", source=REPO_IMAGENET))["digest"] == hub.digest_new
    assert server.paths("GET") == [] and len(server.paths("HEAD")) == 2
    # An explicit revision wins over main, from the cache.
    server.reset()
    assert _ok(online.ask("load", source=REPO_IMAGENET, revision=hub.old))["digest"] == hub.digest_old
    assert server.requests == []
    _fails(online.ask("load", source=REPO_IMAGENET, revision="f" * 40), "RevisionNotFound", "f" * 40)
    _fails(online.ask("load", source="test-org/no-such-repo"), "RepositoryNotFound", "test-org/no-such-repo")

    # Environment overrides of a known name: the repo (revision then defaults to main) and the revision.
    _ok(online.ask("setenv", GHNINIT_HUB_REPO_CIFAR10=REPO_CIFAR))
    assert _ok(online.ask("load", source="cifar10"))["digest"] == hub.digest_cifar
    _ok(online.ask("setenv", GHNINIT_HUB_REPO_CIFAR10=REPO_IMAGENET, GHNINIT_HUB_REVISION_CIFAR10=hub.old))
    assert _ok(online.ask("load", source="cifar10"))["digest"] == hub.digest_old
    _ok(online.ask("setenv", GHNINIT_HUB_REPO_CIFAR10=None, GHNINIT_HUB_REVISION_CIFAR10=None))

    # A pinned sha256 that the cached file does not have is an error, not a silent load.
    server.reset()
    _ok(online.ask("pin", name="imagenet", **{**pin, "sha256": "0" * 64}))
    _fails(online.ask("load", source="imagenet"), "corrupt", "0" * 64, "force_download=True")
    _ok(online.ask("pin", name="imagenet", **pin))

    # HF_HUB_OFFLINE=1 with the same HF_HOME: everything cached loads, with no request.
    _ok(offline.ask("pin", name="imagenet", **pin))
    assert _ok(offline.ask("load", source="imagenet"))["digest"] == hub.digest_old
    assert _ok(offline.ask("load", source=REPO_IMAGENET))["digest"] == hub.digest_new  # cached ref of main
    assert _ok(offline.ask("initialize", fixture=fixture, dataset="imagenet"))["problems"] == []
    assert server.requests == []


@requires_shared
def test_hub_offline_without_cache_fails_clearly(hub):
    hub.server.reset()
    message = _fails(
        hub.offline.ask("load", source=REPO_CIFAR, cache_dir=str(hub.tmp / "empty-cache")),
        REPO_CIFAR,
        "HF_HUB_OFFLINE",
        "run once online",
        "HF_HUB_OFFLINE=0",
        "local path",
        hub.server.url,  # what was tried: the endpoint ...
        "empty-cache",  # ... and the cache
    )
    assert "Traceback" not in message
    assert hub.server.requests == []


@requires_shared
def test_hub_corrupt_or_truncated_download_is_an_error(hub):
    server, online = hub.server, hub.online

    def load(cache: str, **kwargs) -> dict:
        return online.ask("load", source=REPO_IMAGENET, revision=hub.old, cache_dir=str(hub.tmp / cache), **kwargs)

    try:
        # Bytes damaged in transit: the sha256 (the Hub's ETag) does not match; nothing is loaded.
        server.corrupt = "flip"
        _fails(load("flip"), "corrupt", "sha256", "force_download=True")
        server.corrupt = None
        _fails(load("flip"), "corrupt")  # the damaged file stays an error, never random weights
        assert _ok(load("flip", force_download=True))["digest"] == hub.digest_old

        # Truncated body: huggingface_hub's size check fails and nothing is cached.
        server.corrupt = "truncate"
        _fails(load("truncate"), "incomplete", "force_download=True")
        assert not list((hub.tmp / "truncate").rglob("model.safetensors"))
        server.corrupt = None
        assert _ok(load("truncate"))["digest"] == hub.digest_old

        # A damaged file whose ETag matches it (uploaded damaged): safetensors rejects it.
        server.corrupt = "bad_upload"
        _fails(load("bad_upload"), "not a readable safetensors file")
    finally:
        server.corrupt = None


# -- publishing and the scripts' command lines ---------------------------------------------------


@requires_shared
def test_publish_dry_run_uploads_nothing(converted, capsys, monkeypatch):
    import huggingface_hub

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise AssertionError("--dry-run must not contact the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    publish = _script("publish")
    folder = converted["imagenet"].folder
    assert publish.main([str(folder), "some-org/ghn2-imagenet", "--revision", "v1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "[dry run]",
        "some-org/ghn2-imagenet",
        "branch: v1",
        "config.json",
        "README.md",
        "nothing was uploaded",
    ):
        assert needle in out
    assert converted["imagenet"].summary["weights_sha256"] in out


@requires_shared
def test_publish_creates_repo_and_uploads_the_folder(converted, capsys, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return SimpleNamespace(repo_id=repo_id)

        def create_branch(self, repo_id, **kwargs):
            calls.append(("create_branch", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            return SimpleNamespace(oid="a" * 40, commit_url="https://hub.example/commit/aaa")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = converted["cifar10"].folder
    assert _script("publish").main([str(folder), "some-org/ghn2-cifar10"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][2]["exist_ok"] is True
    upload = calls[1][2]
    assert upload["folder_path"] == str(folder) and upload["revision"] == "main"
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]
    out = capsys.readouterr().out
    sha256 = converted["cifar10"].summary["weights_sha256"]
    assert f'HubWeights("some-org/ghn2-cifar10", "{"a" * 40}", "{sha256}", "ghn2_cifar10_random.pt")' in out


def test_scripts_have_help():
    for script in ("convert_ppuda.py", "publish.py"):
        result = subprocess.run(
            [sys.executable, str(REPO_DIR / "hub" / script), "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
