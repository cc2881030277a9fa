"""Sharded models (FSDP2 ``fully_shard``, tensor parallel) initialised in place on 2 CPU processes (gloo).

Each test spawns two ranks that build the model on the meta device, shard it, allocate it with
``to_empty`` and call ``ghninit.initialize``; rank 0 then gathers the full tensors from the
shards and compares them with ``initialize`` on the same model built unsharded.
"""

from __future__ import annotations

import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import ghninit

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)

WORLD = 2
TIMEOUT_S = 150  # a hang guard per spawned pair: each took ~8 s at load average 2 on 2 cores, 35 s at 7
TOLERANCE = 1e-6


# --------------------------------------------------------------------------- models, built the same way twice


def _resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10)


def _vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_small_patch16_224", img_size=32, num_classes=10)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(48, 96)
        self.down = nn.Linear(96, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(x.flatten(1)[:, :48]))))


def _fsdp2(build, children):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    with torch.device("meta"):
        model = build()
    for child in children(model):
        fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    return model


def _tensor_parallel(build):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    with torch.device("meta"):
        model = build()
    parallelize_module(model, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    model.to_empty(device="cpu")
    return model


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered whole from the shards (a collective: every rank calls it)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # the shards, not unsharded copies an earlier forward left behind
        if isinstance(module, FSDPModule):
            module.reshard()
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }


# --------------------------------------------------------------------------- scenarios (run on every rank)


def _matches_unsharded(rank: int, build, children, shard=None, **kwargs) -> dict:
    model = shard(build) if shard is not None else _fsdp2(build, children)
    report = ghninit.initialize(model, dataset="cifar10-mini", **kwargs)
    full = _full(model)
    local = {n: tuple((p.to_local() if hasattr(p, "to_local") else p).shape) for n, p in model.named_parameters()}
    result = {"report": report, "str": str(report), "local": local}
    if rank == 0:
        torch.manual_seed(0)
        plain = build()
        want = ghninit.initialize(plain, dataset="cifar10-mini", **kwargs)
        params = dict(plain.named_parameters())
        result["want_predicted"] = want.predicted
        result["want_postprocessed"] = want.postprocessed
        # NaN (a shard never written) compares false with anything: count it as infinitely far
        result["diff"] = {n: (full[n] - params[n]).abs().nan_to_num(float("inf")).max().item() for n in want.predicted}
        result["want"] = {n: params[n].detach() for n in want.predicted}
        result["model"] = want.model
    return result


def _save(rank: int, out: str, result: dict) -> None:
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def _after_a_forward(shard):
    """``shard``, then one forward pass: FSDP2 leaves the root's parameters unsharded (plain tensors) after it."""

    def sharded(build):
        model = shard(build)
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        assert not hasattr(model.conv1.weight, "to_local")  # what initialize has to undo
        return model

    return sharded


def _resnet18_scenario(rank: int, out: str) -> None:
    """ResNet-18 against the unsharded model, then the failure on one rank (one spawn for both tests)."""
    stages = lambda m: [m.layer1, m.layer2, m.layer3, m.layer4]  # noqa: E731
    shard = _after_a_forward(lambda build: _fsdp2(build, stages))
    result = _matches_unsharded(rank, _resnet18, stages, shard=shard)
    result["failure"] = _failure(rank)
    _save(rank, out, result)


def _vit_scenario(rank: int, out: str) -> None:
    _save(rank, out, _matches_unsharded(rank, _vit, lambda m: list(m.blocks)))


def _tensor_parallel_scenario(rank: int, out: str) -> None:
    """The pair without and with orth, then orth with rank 0 computing and scattering (one spawn: they are small)."""
    import ghninit.write.sharded as sharded

    result = _matches_unsharded(rank, _MLP, None, shard=_tensor_parallel)
    result["orth"] = _matches_unsharded(rank, _MLP, None, shard=_tensor_parallel, postprocess="orth")
    sharded.SCATTER_FROM = 0
    try:
        model = _tensor_parallel(_MLP)
        report = ghninit.initialize(model, dataset="cifar10-mini", postprocess="orth")
    finally:
        sharded.SCATTER_FROM = None
    scattered = _full(model)
    if rank == 0:
        want = result["orth"]["want"]
        result["scatter_diff"] = max((scattered[n] - want[n]).abs().max().item() for n in report.predicted)
    _save(rank, out, result)


def _failure(rank: int) -> dict:
    """Rank 1 fails while staging one shard; no rank may change anything."""
    import ghninit.write.sharded as sharded

    model = _fsdp2(_resnet18, lambda m: [m.layer1, m.layer2, m.layer3, m.layer4])
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().fill_(0.25)
    before = {n: p.to_local().clone() for n, p in model.named_parameters()}
    if rank == 1:
        real = sharded._local_chunk

        def failing(full, param):
            if param is model.layer3[1].conv2.weight:
                raise RuntimeError("injected failure on rank 1")
            return real(full, param)

        sharded._local_chunk = failing
    try:
        ghninit.initialize(model, dataset="cifar10-mini")
        error = None
    except Exception as err:  # noqa: BLE001 - the test inspects whatever was raised
        error = (type(err).__name__, str(err))
    finally:
        if rank == 1:
            sharded._local_chunk = real
    unchanged = all(torch.equal(p.to_local(), before[n]) for n, p in model.named_parameters())
    return {"error": error, "unchanged": unchanged}


def _dcp_scenario(rank: int, out: str) -> None:
    """``python -m ghninit init ... --format dcp`` as torchrun would run it on 2 ranks."""
    from ghninit.__main__ import main

    os.environ["WORLD_SIZE"] = str(WORLD)
    folder = os.path.join(out, "r18.dcp")
    status = main(["init", "torchvision:resnet18", "--num-classes", "10", "-o", folder, "--format", "dcp"])
    _save(rank, out, {"status": status})


# --------------------------------------------------------------------------- spawning


def _worker(rank: int, scenario, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        scenario(rank, out)
        dist.barrier()  # tear down together: a rank leaving gloo while its peer still works can abort the peer
    except BaseException:
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _spawn(scenario, tmp_path) -> list[dict]:
    """Run ``scenario`` on 2 ranks, killing both after :data:`TIMEOUT_S`; returns what each rank saved."""
    context = mp.start_processes(
        _worker, args=(scenario, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario.__name__} did not finish on {WORLD} ranks in {TIMEOUT_S} s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = [(tmp_path / f"rank{r}.err") for r in range(WORLD)]
        raise AssertionError("\n".join(e.read_text() for e in errors if e.exists())) from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _check_matches(ranks: list[dict]) -> None:
    first = ranks[0]
    assert first["want_predicted"], "the unsharded model had nothing predicted"
    for result in ranks:
        report = result["report"]
        assert report.predicted == first["want_predicted"]
        assert report.model == first["model"]  # the user's class, not FSDP's wrapper class
        assert set(report.sharded) == set(report.predicted)
        for name, (global_shape, local_shape, _) in report.sharded.items():
            assert local_shape == result["local"][name] and len(global_shape) == len(local_shape)
        assert "sharded: rank" in result["str"]
    worst = max(first["diff"].items(), key=lambda kv: kv[1])
    assert worst[1] <= TOLERANCE, f"'{worst[0]}' differs from the unsharded initialisation by {worst[1]}"


@pytest.fixture(scope="module")
def resnet18_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_resnet18_scenario, tmp_path_factory.mktemp("resnet18"))


def test_fsdp2_resnet18_after_a_forward_matches_unsharded(resnet18_ranks):
    ranks = resnet18_ranks
    _check_matches(ranks)
    report = ranks[1]["report"]
    assert report.rank == (1, WORLD)
    global_shape, local_shape, how = report.sharded["layer1.0.conv1.weight"]
    assert global_shape == (64, 64, 3, 3) and local_shape == (32, 64, 3, 3) and "Shard(dim=0)" in how


def test_fsdp2_vit_small_matches_unsharded(tmp_path):
    ranks = _spawn(_vit_scenario, tmp_path)
    _check_matches(ranks)
    assert ranks[0]["report"].model == "VisionTransformer"


def test_tensor_parallel_linear_pair_matches_unsharded(tmp_path):
    ranks = _spawn(_tensor_parallel_scenario, tmp_path)
    _check_matches(ranks)
    layout = ranks[0]["report"].sharded
    assert layout["up.weight"][:2] == ((96, 48), (48, 48))  # column-wise: output rows split
    assert layout["down.weight"][:2] == ((48, 96), (48, 48))  # row-wise: input columns split
    assert layout["head.weight"][1] == (10, 48)  # not parallelised: written whole
    # orth one full tensor at a time on each rank draws the noise of one pass over the unsharded model
    _check_matches([r["orth"] for r in ranks])
    assert ranks[0]["orth"]["report"].postprocessed == ranks[0]["orth"]["want_postprocessed"]
    assert ranks[0]["orth"]["want_postprocessed"] == ["up.weight", "down.weight"]
    assert ranks[0]["scatter_diff"] <= TOLERANCE  # rank 0 computing and scattering: the same shards


def test_failure_on_one_rank_changes_no_rank(resnet18_ranks):
    ranks = [r["failure"] for r in resnet18_ranks]
    assert all(r["unchanged"] for r in ranks)
    assert ranks[1]["error"] == ("RuntimeError", "injected failure on rank 1")
    kind, message = ranks[0]["error"]
    assert kind == "ShardedModelError" and "rank 1: RuntimeError: injected failure on rank 1" in message


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_init_cli_writes_a_sharded_dcp_checkpoint(tmp_path):
    import json

    import torch.distributed.checkpoint as dcp

    ranks = _spawn(_dcp_scenario, tmp_path)
    assert [r["status"] for r in ranks] == [0, 0]
    summary = json.loads((tmp_path / "r18.dcp.json").read_text())
    assert summary["format"] == "dcp" and summary["world_size"] == WORLD
    assert not list(tmp_path.glob(".r18.dcp.*"))  # no temporary folder left
    loaded = _resnet18()
    state = loaded.state_dict()
    dcp.load(state, checkpoint_id=str(tmp_path / "r18.dcp"))  # one process reads both ranks' shards
    plain = _resnet18()
    report = ghninit.initialize(plain, dataset="cifar10-mini")
    assert summary["report"]["predicted"] == report.predicted
    want = dict(plain.named_parameters())
    assert max((state[n] - want[n]).abs().nan_to_num(float("inf")).max().item() for n in report.predicted) <= TOLERANCE


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_init_cli_dcp_in_one_process(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from ghninit.__main__ import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "r18.dcp"
    args = ["init", "torchvision:resnet18", "--num-classes", "10", "-o", str(out), "--format", "dcp"]
    assert main(args) == 0
    assert main(args) == 2  # exists: refused without --force
    assert main([*args, "--force"]) == 0
    state = _resnet18().state_dict()
    dcp.load(state, checkpoint_id=str(out))
    plain = _resnet18()
    report = ghninit.initialize(plain, dataset="cifar10-mini")
    want = dict(plain.named_parameters())
    assert max((state[n] - want[n]).abs().max().item() for n in report.predicted) <= TOLERANCE


# --------------------------------------------------------------------------- the meta twin, in this process


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_meta_twin_traces_like_the_plain_model(one_rank):
    """Tracing the FSDP2 model itself fails (FSDP<Class> wrappers, hooks); its twin gives the plain model's graph."""
    from torch.distributed.fsdp import fully_shard

    from ghninit.graph.build import build_graph
    from ghninit.write.sharded import meta_twin

    with torch.device("meta"):
        plain, model = _resnet18(), _resnet18()
    for stage in (model.layer1, model.layer2):
        fully_shard(stage)
    fully_shard(model)
    model.to_empty(device="cpu")
    with pytest.raises(ghninit.TraceError, match="FSDPSequential"):
        build_graph(model)
    twin = meta_twin(model)
    assert type(twin).__name__ == "ResNet" and type(twin.layer1) is nn.Sequential
    assert not twin._forward_pre_hooks and not twin.layer1._forward_hooks
    assert all(p.is_meta and type(p) is nn.Parameter for p in twin.parameters())
    assert [(n, p.shape) for n, p in twin.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    assert type(model).__name__ == "FSDPResNet" and not any(p.is_meta for p in model.parameters())  # untouched
    twin_graph, plain_graph = build_graph(twin), build_graph(plain)
    described = [(n.name, n.primitive, n.param, n.param_shape) for n in twin_graph.nodes]
    assert described == [(n.name, n.primitive, n.param, n.param_shape) for n in plain_graph.nodes]


def test_meta_twin_keeps_ties():
    from ghninit.write.sharded import meta_twin

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight
    model.append(model[1])  # a shared submodule
    twin = meta_twin(model)
    assert twin[1].weight is twin[0].weight and twin[2] is twin[1]
    assert model[0].weight.device.type == "cpu"
