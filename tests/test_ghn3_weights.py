"""Published GHN-3 files: safe unpickling, config inference, conversion, and the Hub download path."""

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
from hub_server import HubServer
from test_hub import _worker_env

import ghninit
from ghninit.ghn3_weights import (
    GHN3_WEIGHTS,
    GHN3ConfigError,
    convert_ghn3_pickle,
    ghn3_from_state_dict,
    infer_ghn3_config,
)
from ghninit.safe_pickle import UnsafePickleError, load_state_dict_pickle

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
    state = _tiny_state()
    source = tmp_path / "tiny.joblib"
    source.write_bytes(pickle.dumps(state, protocol=4))
    folder = convert_ghn3_pickle(source, tmp_path / "converted", {"repo_id": "x/y", "filename": "tiny.joblib"})
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md", "source.json"}
    from ghninit.hub import file_sha256

    assert json.loads((folder / "source.json").read_text())["sha256"] == file_sha256(source)
    assert file_sha256(source) in (folder / "README.md").read_text()
    ghn = ghninit.load_ghn(folder)
    assert isinstance(ghn, ghninit.GHN3) and ghn.config["layers"] == 2
    assert all(torch.equal(ghn.state_dict()[k], v) for k, v in state.items())
    direct = ghn3_from_state_dict(state).eval()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 10)
    )
    a, b = ghn.predict(model), direct.predict(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the Hub path, against a local server ------------------------------------------------------------


_SCRIPT = """
import json, sys, ghninit
from ghninit.ghn3_weights import fetch_and_convert_ghn3
folder = fetch_and_convert_ghn3('ghn3-t')
ghn = ghninit.load_ghn('ghn3-t')
print('@@', json.dumps({'folder': str(folder), 'type': type(ghn).__name__, 'config': ghn.config}))
"""


def test_fetch_and_convert_from_local_hub(tmp_path):
    joblib_path = _joblib()
    repo = tmp_path / "repo"
    repo.mkdir()
    entry = GHN3_WEIGHTS["ghn3-t"]
    (repo / entry.filename).write_bytes(joblib_path.read_bytes())
    with HubServer() as server:
        server.add_commit(entry.repo_id, repo)
        env = _worker_env(server, tmp_path / "hf", offline=False)
        runs = []
        for _ in range(2):
            server.reset()
            out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-3000:]
            runs.append((json.loads(out.stdout.split("@@", 1)[1]), server.paths("GET")))
    (first, gets1), (second, gets2) = runs
    assert first["type"] == "GHN3" and first["config"]["hid"] == 64 and first["config"]["layers"] == 3
    assert any(entry.filename in p for p in gets1)  # downloaded once...
    assert not any(entry.filename in p for p in gets2)  # ...then read from the cache
    folder = tmp_path / "hf" / "ghninit" / "converted" / "ghn3-t"
    assert first["folder"] == str(folder) and (folder / "model.safetensors").is_file()
    source = json.loads((folder / "source.json").read_text())
    from ghninit.hub import file_sha256

    assert source["sha256"] == file_sha256(joblib_path) and source["repo_id"] == entry.repo_id


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
