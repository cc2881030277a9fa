"""Published GHN-3 files: safe unpickling, config inference, conversion, the four names, and the Hub download path."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from ghn3_parity import ghn3_file
from hub_server import HubServer, state_digest, worker_env

import ghninit
from ghninit.zoo.catalog import format_table
from ghninit.zoo.ghn3_weights import (
    GHN2_RESNET50_TOP1,
    GHN3_REPO,
    GHN3_WEIGHTS,
    GHN3ConfigError,
    HubPickle,
    ghn3_from_state_dict,
    infer_ghn3_config,
)
from ghninit.zoo.registry import KNOWN_GHNS, variant_of
from ghninit.zoo.safe_pickle import UnsafePickleError, load_state_dict_pickle

# Published sizes: hid, layers, heads, c. T, L and XL as pinned by the fixture README (their
# parameter counts match the published files); S's layer count is not published: any count is
# read back from the shapes, so 5 stands in.
PUBLISHED = {
    "ghn3-t": (64, 3, 8, 64, 6_906_632),
    "ghn3-s": (128, 5, 16, 128, None),
    "ghn3-l": (256, 12, 16, 256, 214_668_960),
    "ghn3-xl": (384, 24, 16, 384, 654_365_184),
}


def _joblib():
    path = ghn3_file("ghn3tm8_random.joblib")
    if path is None:
        pytest.skip("ghn3tm8_random.joblib not found (../shared absent)")
    return path


def _tiny_state() -> dict[str, torch.Tensor]:
    with torch.device("cpu"):
        ghn = ghninit.GHN3(max_shape=(16, 16, 16, 16), hid=16, layers=2, heads=4, num_classes=10)
    return ghn.state_dict()


# -- safe unpickling -----------------------------------------------------------------------------


def test_joblib_fixture_loads_like_the_safetensors():
    from safetensors.torch import load_file

    state = load_state_dict_pickle(_joblib())
    ref = load_file(str(ghn3_file("ghn3tm8_random.safetensors")))
    assert list(state) and set(state) == set(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_plain_pickle_of_tensors_round_trips(tmp_path):
    state = OrderedDict(a=torch.randn(3, 4), b=torch.arange(5.0)[1:4], c=torch.nn.Parameter(torch.ones(2)))
    path = tmp_path / "sd.pkl"
    path.write_bytes(pickle.dumps(state, protocol=4))
    loaded = load_state_dict_pickle(path)
    assert set(loaded) == {"a", "b", "c"} and all(torch.equal(loaded[k], state[k].detach()) for k in state)


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __reduce__(self):
        import builtins

        return builtins.eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize(
    "payload, refused",
    [
        (lambda m: {"w": torch.ones(2), "x": _Shell(m)}, "posix.system"),
        (lambda m: _Shell(m), "posix.system"),
        (lambda m: {"w": _Eval()}, "builtins.eval"),
        (lambda m: {"w": torch.ones(2), "f": print}, "builtins.print"),
    ],
    ids=["os-system-in-dict", "os-system", "builtins-eval", "builtins-global"],
)
def test_malicious_pickles_are_refused_without_side_effects(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.joblib"
    path.write_bytes(pickle.dumps(payload(marker), protocol=4))
    if os.name != "posix":
        refused = refused.split(".")[1]
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")):
        load_state_dict_pickle(path)
    assert not marker.exists()
    with pytest.raises(ghninit.GHNLoadError, match="refused global"):
        ghninit.load_ghn(path)
    assert not marker.exists()


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.joblib"
    path.write_bytes(pickle.dumps([torch.ones(1)]))
    with pytest.raises(UnsafePickleError, match="dict of name -> tensor"):
        load_state_dict_pickle(path)
    compressed = tmp_path / "z.joblib"
    compressed.write_bytes(b"\x78\x9c" + b"\x00" * 20)
    with pytest.raises(UnsafePickleError, match="compressed"):
        load_state_dict_pickle(compressed)


# -- config inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_config_is_inferred_from_shapes_alone(name):
    hid, layers, heads, c, n_params = PUBLISHED[name]
    config = {"max_shape": [c, c, 16, 16], "num_classes": 1000, "hid": hid, "layers": layers, "heads": heads}
    with torch.device("meta"):
        state = ghninit.GHN3(**config).state_dict()
    inferred = infer_ghn3_config(state)
    assert {k: inferred[k] for k in config} == config
    if n_params is not None:
        assert sum(v.numel() for v in state.values()) == n_params
    # the reference also stores the graph embeddings at top level
    moved = {
        (k[len("gnn.0.") :] if "embed_in" in k or "embed_out" in k or "input_dist" in k else k): v
        for k, v in state.items()
    }
    assert infer_ghn3_config(moved) == inferred


def test_config_inference_errors_name_the_problem():
    state = _tiny_state()
    del state["decoder.conv.2.weight"]
    with pytest.raises(GHN3ConfigError, match="decoder.conv.2.weight"):
        infer_ghn3_config(state)
    with pytest.raises(GHN3ConfigError, match="GHN-2"):
        infer_ghn3_config({"gnn.gru.weight_ih": torch.zeros(1)})


# -- conversion ---------------------------------------------------------------------------------


def test_conversion_round_trip(tmp_path):
    from ghninit.zoo.cache import write_ghn_folder
    from ghninit.zoo.cards import render_card

    state = _tiny_state()
    source = tmp_path / "tiny.joblib"
    source.write_bytes(pickle.dumps(state, protocol=4))
    hub_file = HubPickle("x/y", "tiny.joblib")
    folder = tmp_path / "converted"
    folder.mkdir()
    provenance = write_ghn_folder(
        hub_file.convert(source), folder, hub_file.provenance(), lambda p: render_card(KNOWN_GHNS["ghn3-t"], p)
    )
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "provenance.json"}
    assert provenance["config"]["layers"] == 2 and provenance["license"] == "MIT"
    ghn = ghninit.load_ghn(folder)
    assert isinstance(ghn, ghninit.GHN3) and ghn.config["layers"] == 2
    assert all(torch.equal(ghn.state_dict()[k], v) for k, v in state.items())
    direct = ghn3_from_state_dict(state).eval()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 10)
    )
    a, b = ghn.predict(model), direct.predict(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = tmp_path / "list.joblib"
    bad.write_bytes(pickle.dumps([torch.ones(1)]))
    with pytest.raises(ghninit.GHNLoadError, match=r"tiny\.joblib of x/y .*list\.joblib.*Nothing was loaded or cached"):
        hub_file.convert(bad)


# -- the names: registry, list, variants -----------------------------------------------------------


def test_the_four_names_are_known_ghns_with_their_hub_files_and_figures(tmp_path):
    from ghninit.zoo.check import published

    top1 = published()["top1"]
    assert GHN2_RESNET50_TOP1 == top1["ghn2-imagenet"]["resnet50"]
    files = {"ghn3-t": "ghn3tm8.pt", "ghn3-s": "ghn3sm8.pt", "ghn3-l": "ghn3lm8.pt", "ghn3-xl": "ghn3xlm16.pt"}
    rows = {r["name"]: r for r in ghninit.list_ghns(cache_dir=tmp_path)}
    for name, filename in files.items():
        entry = KNOWN_GHNS[name]
        (source,) = entry.sources
        assert isinstance(source, HubPickle) and (source.repo_id, source.filename) == (
            "SamsungSAILMontreal/ghn3",
            filename,
        )
        assert source.revision == "main" and not source.pinned and "no commit pinned" in source.describe()
        assert entry.variant == name and entry.dataset == "imagenet" and "2303.04143" in entry.paper
        row = rows[name]
        assert row["variant"] == name.upper().replace("GHN3", "GHN-3") and row["dataset"] == "ImageNet"
        assert row["source"] == f"Hub file SamsungSAILMontreal/ghn3@main:{filename}" and not row["cached"]
        assert row["parameters"] == PUBLISHED[name][4] and row["parameters_expected"]
        if name in top1:  # T and XL: the published ResNet-50 figure, with GHN-2's for comparison
            assert row["accuracy"] == (
                f"published, top-1 % on ImageNet: ResNet-50 {top1[name]['resnet50']:.1f} (GHN-2 on ImageNet: 1.1)"
            )
        else:
            assert row["accuracy"] is None
    assert [rows[n]["accuracy"].split("ResNet-50 ")[1][:4] for n in ("ghn3-t", "ghn3-xl")] == ["10.4", "20.0"]
    assert [rows[n]["download_size"] for n in files] == ["27 MB", None, "859 MB", "2.5 GB"]
    table = format_table(list(rows.values()))
    assert "ghn3-s: GHN-3-S, ImageNet, parameters unknown until downloaded" in table
    assert "ghn3-t: GHN-3-T, ImageNet, 6,906,632 parameters (expected), download 27 MB" in table


def test_variant_of_recognises_the_published_ghn3_configs():
    for name, weights in GHN3_WEIGHTS.items():
        config = weights.config() or {**GHN3_WEIGHTS["ghn3-l"].config(), "hid": 128, "layers": 5}
        assert variant_of(config) == name
    fixture = {"hypernet": "gatedgnn", "is_ghn2": False, "hid": 64, "layers": 3, "heads": 8}  # the reference's keys
    assert variant_of(fixture) == "ghn3-t"
    assert variant_of({**fixture, "hid": 16}) is None  # not a published size
    assert variant_of({"hypernet": "gatedgnn", "ve": True, "weight_norm": True, "layernorm": True}) == "ghn2"


def test_offline_without_cache_names_the_hub_file_and_how_to_prefill(tmp_path, monkeypatch):
    monkeypatch.setenv("GHNINIT_OFFLINE", "1")
    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ghninit.GHNLoadError) as err:
        ghninit.load_ghn("ghn3-t")
    message = str(err.value)
    for needle in (
        "1. Hub file ghn3tm8.pt of SamsungSAILMontreal/ghn3 at revision main",
        "offline mode is on",
        str(tmp_path / "cache"),
        "GHNINIT_CACHE=",
        "python -m ghninit download ghn3-t",
        "download_ghn('ghn3-t')",
    ):
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert not (tmp_path / "cache" / "ghns" / "ghn3-t").exists()


# -- the Hub path, against a local server ------------------------------------------------------------


_SCRIPT = """
import json, sys, warnings, ghninit
from hub_server import state_digest
from ghninit.zoo.ghn3_weights import GHN3_REPO, HubPickle
from ghninit.zoo.registry import KnownGHN, register_ghn

# a GHN-3-T pinned to a sha256 its file does not have
register_ghn(KnownGHN("test-ghn3-pinned", "ghn3-t", "imagenet", (HubPickle(GHN3_REPO, "ghn3tm8.pt", sha256="0" * 64),)))
answers = []
for name, revision, *token in json.loads(sys.argv[1]):
    token = token[0] if token else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ghn = ghninit.load_ghn(name, revision, token=token)
            folder = ghninit.download_ghn(name, revision, token=token)
            row = next(r for r in ghninit.list_ghns() if r["name"] == name) if name.startswith("ghn3") else None
            answer = {"ok": True, "type": type(ghn).__name__, "config": ghn.config, "digest": state_digest(ghn),
                      "folder": str(folder), "row": row}
        except ghninit.GHNLoadError as err:
            answer = {"ok": False, "type": type(err).__name__, "message": str(err)}
    answers.append({**answer, "warnings": [str(w.message) for w in caught if "listed as" in str(w.message)]})
print("@@", json.dumps(answers))
"""


def _run(env: dict, *loads: tuple[str, str | None] | tuple[str, str | None, str]) -> list[dict]:
    cmd = [sys.executable, "-c", _SCRIPT, json.dumps(loads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("@@", 1)[1])


def test_ghn3_t_by_name_downloads_from_the_hub_once_then_loads_from_the_cache(tmp_path):
    from ghninit.zoo.cache import file_sha256

    joblib_path = _joblib()
    expected = state_digest(ghninit.load_ghn(joblib_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    source = KNOWN_GHNS["ghn3-t"].sources[0]
    (repo / source.filename).write_bytes(joblib_path.read_bytes())
    with HubServer() as server:
        commit = server.add_commit(source.repo_id, repo)
        env = worker_env(server, tmp_path / "hf", offline=False)
        cache = tmp_path / "hf" / "ghninit" / "ghns"

        # 1. `python -m ghninit download ghn3-t`: one download, converted into the shared cache
        out = subprocess.run(
            [sys.executable, "-m", "ghninit", "download", "ghn3-t"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        folder = cache / "ghn3-t" / "hub-main"
        assert out.returncode == 0 and str(folder) in out.stdout, out.stderr[-3000:]
        assert len([p for p in server.paths("GET") if source.filename in p]) == 1, server.paths()
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "provenance.json",
        ]
        provenance = json.loads((folder / "provenance.json").read_text())
        assert provenance["source_sha256"] == file_sha256(joblib_path), "the sha256 of what was converted"
        assert provenance["weights_sha256"] == file_sha256(folder / "model.safetensors")
        assert provenance["path"] == source.filename and provenance["revision"].startswith("main (a branch")
        card = (folder / "README.md").read_text()
        for needle in ("huggingface.co/SamsungSAILMontreal/ghn3", "main", source.filename, provenance["source_sha256"],
                       "MIT", "arxiv.org/abs/2303.04143", "GHN-3-T trained on ImageNet", "| 10.4 |",
                       "GHN-2 on ImageNet: 1.1", "architecture variant (from the checkpoint's config) | GHN-3-T"):  # fmt: skip
            assert needle in card, needle
        assert not list((cache / ".tmp").iterdir()), "the downloaded joblib file is not kept"
        assert (cache / ".locks" / "ghn3-t--hub-main.lock").exists(), "the shared cache's file lock was taken"

        # 2. load_ghn / download_ghn by name: from the cache, no request at all, no variant warning
        server.reset()
        (answer,) = _run(env, ("ghn3-t", None))
        assert answer["ok"] and answer["type"] == "GHN3" and answer["digest"] == expected, answer
        assert answer["folder"] == str(folder) and answer["warnings"] == []
        row = answer["row"]
        assert row["cached"] and row["location"] == str(folder) and not row["parameters_expected"]
        assert row["parameters"] == provenance["parameters"] == PUBLISHED["ghn3-t"][4] and row["size_mb"] > 0
        assert server.requests == [], "a cached GHN-3 needs no request"

        # 3. HF_HUB_OFFLINE=1 with that cache works too
        (answer,) = _run(worker_env(server, tmp_path / "hf", offline=True), ("ghn3-t", None))
        assert answer["ok"] and answer["digest"] == expected and server.requests == [], answer

        # 4. a file the Hub does not have, a pinned sha256 that does not match, an explicit revision
        server.reset()
        missing, pinned, by_commit = _run(
            env, ("ghn3-s", None), ("test-ghn3-pinned", None, "hf_test_token"), ("ghn3-t", commit)
        )
        sent = {(path, auth) for (method, path), auth in zip(server.requests, server.authorizations) if method == "GET"}
    assert not missing["ok"] and missing["type"] == "GHNLoadError", missing
    for needle in ("no source could provide it", "1. Hub file ghn3sm8.pt of SamsungSAILMontreal/ghn3", "EntryNotFound"):
        assert needle in missing["message"], f"{needle!r} not in:\n{missing['message']}"
    assert not pinned["ok"] and pinned["type"] == "GHNLoadError", pinned
    assert "is not the pinned file" in pinned["message"] and f"expected {'0' * 64}" in pinned["message"]
    pinned_file = f"/{GHN3_REPO}/resolve/main/ghn3tm8.pt"
    assert (pinned_file, "Bearer hf_test_token") in sent, f"the token reaches the Hub download: {sent}"
    assert all(auth is None for path, auth in sent if "ghn3sm8" in path or commit in path), "no token where none was given"
    assert by_commit["ok"] and by_commit["folder"] == str(cache / "ghn3-t" / f"hub-{commit}"), by_commit
    assert by_commit["digest"] == expected
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["ghn3-t"], "nothing else cached"


def test_published_file_named_pt_loads_as_ghn3(tmp_path):
    path = tmp_path / "ghn3tm8.pt"  # the published files are joblib pickles with a .pt suffix
    path.write_bytes(_joblib().read_bytes())
    ghn = ghninit.load_ghn(path)
    assert isinstance(ghn, ghninit.GHN3) and ghn.config["layers"] == 3
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Shell(tmp_path / "pwned"), protocol=4))
    with pytest.raises(ghninit.GHNLoadError):
        ghninit.load_ghn(evil)
    assert not (tmp_path / "pwned").exists()
