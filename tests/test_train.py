"""GHN training: exact batched prediction, loss decrease on a fixed batch, NaN skipping, exact resume."""

from __future__ import annotations

import copy
import csv
import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import ghninit
from ghninit import build_graph, deepnets
from ghninit.ghn.presets import PRESETS
from ghninit.training.data import ImageTensors, TrainBatches
from ghninit.training.trainer import (
    ArchitecturePrefetcher,
    TrainConfig,
    Trainer,
    make_ghn,
    meta_batch_indices,
    predict_params,
    prepare_architecture,
    sample_meta_batch,
    union_graph,
)

SMALL = TrainConfig(meta_batch=2, batch_size=8, max_nodes=300, lr_steps=(1000,), epochs=1)


def _small_archs(config: TrainConfig, n: int, start: int = 0) -> list:
    """The first ``n`` TRAIN architectures with few nodes (fast to run)."""
    out, i = [], start
    while len(out) < n:
        spec = deepnets.generate("train", i)
        i += 1
        if spec.n_cells <= 6 and spec.channels <= 32 and spec.genotype.steps <= 2:
            out.append(prepare_architecture(spec, config))
    return out


def _synthetic(n: int = 32, seed: int = 0) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[:, labels % 3, :, :] //= 2  # a little class signal
    return ImageTensors(images, labels)


def test_batched_prediction_equals_ghn_forward():
    torch.manual_seed(0)
    ghn = make_ghn(TrainConfig())
    with torch.no_grad():  # make every decoder row matter
        for p in ghn.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    archs = _small_archs(TrainConfig(), 3)
    wide = prepare_architecture(deepnets.generate("wide", 2), TrainConfig())  # 128 channels: tiling
    graphs = [a.graph for a in archs] + [
        wide.graph,
        build_graph(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))),
    ]
    got = predict_params(ghn, graphs)
    for graph, pred in zip(graphs, got):
        ref = ghn(graph)
        assert pred.keys() == ref.keys()
        for name in ref:
            assert pred[name].shape == ref[name].shape, name
            torch.testing.assert_close(pred[name], ref[name], rtol=1e-5, atol=1e-6)


def test_union_graph_offsets_edges():
    archs = _small_archs(TrainConfig(), 2)
    g = union_graph([a.graph for a in archs])
    n0 = len(archs[0].graph)
    assert len(g) == n0 + len(archs[1].graph)
    assert (g.edges[len(archs[0].graph.edges) :, :2] >= n0).all()
    assert len(g.depth_levels()) == max(len(a.graph.depth_levels()) for a in archs)


def test_meta_batches_are_deterministic():
    assert meta_batch_indices(0, 5, 0, 8, 10**6) == meta_batch_indices(0, 5, 0, 8, 10**6)
    assert meta_batch_indices(0, 5, 0, 8, 10**6) != meta_batch_indices(0, 6, 0, 8, 10**6)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    config = dataclasses.replace(SMALL, lr=2e-3)
    trainer = Trainer(config)
    archs = _small_archs(config, 2)
    trainer.sample_architectures = lambda step: ([0, 1], archs)
    data = _synthetic(16)
    images, labels = data.normalize(data.images), data.labels
    losses = [trainer.train_step(images, labels).loss for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def test_non_finite_meta_batch_is_skipped_and_logged():
    trainer = Trainer(SMALL)
    archs = _small_archs(SMALL, 2)
    trainer.sample_architectures = lambda step: ([0, 1], archs)
    before = copy.deepcopy(trainer.ghn.state_dict())
    images = torch.full((4, 3, 32, 32), float("nan"))
    result = trainer.train_step(images, torch.zeros(4, dtype=torch.long))
    assert result.skipped and "non-finite" in result.reason
    assert trainer.skipped == [(0, result.reason)]
    for k, v in trainer.ghn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.step == 1


def test_resume_reproduces_the_next_step(tmp_path):
    data = TrainBatches(_synthetic(32), SMALL.batch_size, seed=3)
    a = Trainer(SMALL, steps_per_epoch=data.steps_per_epoch)
    a.train_step(*data.batch(0))
    a.save(tmp_path / "ckpt.pt")
    expected = a.train_step(*data.batch(1))

    b = Trainer(SMALL, ghn=make_ghn(SMALL, seed=123), steps_per_epoch=data.steps_per_epoch)
    b.load(tmp_path / "ckpt.pt")
    assert b.step == 1
    got = b.train_step(*data.batch(b.step))
    assert got.arch_indices == expected.arch_indices
    assert got.loss == expected.loss
    for (k, va), vb in zip(a.ghn.state_dict().items(), b.ghn.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.optimizer.state_dict()["state"][0]["step"] == b.optimizer.state_dict()["state"][0]["step"]


def test_presets_are_the_paper_ablations():
    ghn1 = make_ghn(TrainConfig(**PRESETS["ghn1"]))
    assert not ghn1.ve and not ghn1.weight_norm and not ghn1.layernorm
    mlp = make_ghn(TrainConfig(**PRESETS["mlp"]))
    assert mlp.hypernet == "mlp"
    archs = _small_archs(TrainConfig(**PRESETS["ghn1"]), 1)
    assert not archs[0].graph.virtual_edges.size  # no virtual edges without ve
    out = predict_params(mlp, [a.graph for a in _small_archs(TrainConfig(), 1)])
    assert out and all(torch.isfinite(t).all() for t in out[0].values())


def test_published_architecture_is_trained():
    ghn = make_ghn(TrainConfig())
    assert ghn.config == {**ghninit.GHN2(max_shape=(64, 64, 11, 11), num_classes=10).config}
    assert sum(p.numel() for p in ghn.parameters()) == sum(
        p.numel() for p in ghninit.GHN2(max_shape=(64, 64, 11, 11), num_classes=10).parameters()
    )


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image_folder(root, per_class: int = 2) -> None:
    from PIL import Image

    from ghninit.training.data import CIFAR10_CLASSES

    g = torch.Generator().manual_seed(0)
    for part in ("train", "test"):
        for name in CIFAR10_CLASSES:
            (root / part / name).mkdir(parents=True)
            for k in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / part / name / f"{k:04d}.png")


def test_train_and_eval_scripts_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    _image_folder(tmp_path / "data")
    train_ghn, eval_ghn = _load_script("train_ghn"), _load_script("eval_ghn")
    args = ["--data-dir", str(tmp_path / "data"), "--save-dir", str(tmp_path / "run"), "--quiet", "--procs", "1"]
    args += ["--batch-size", "8", "--meta-batch", "2", "--max-nodes", "300", "--epochs", "10"]
    assert train_ghn.main([*args, "--max-steps", "1"]) == 0
    assert train_ghn.main([*args, "--max-steps", "2"]) == 0  # resumes at step 1
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 2/2" in out
    assert train_ghn.main([*args, "--max-steps", "3", "--max-cpu-minutes", "0"]) == 0  # budget spent: no step
    assert "--max-cpu-minutes 0.0 reached: step 2/3" in capsys.readouterr().out
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,loss") and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    final = tmp_path / "run" / "final"
    assert (final / "config.json").exists() and (final / "model.safetensors").exists()
    ghn = ghninit.load_ghn(final)
    assert ghn.config == make_ghn(TrainConfig()).config
    assert ghninit.load_ghn(final / "ghn.safetensors").config == ghn.config
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and {"ghn", "optimizer", "scheduler", "rng", "cpu_minutes"} <= state.keys()

    assert (
        eval_ghn.main(
            ["--ghn", str(final), "--data-dir", str(tmp_path / "data"), "-n", "1", "--out", str(tmp_path / "e.json")]
        )
        == 0
    )
    assert "| test | 1 |" in capsys.readouterr().out
    assert (
        eval_ghn.main(
            [
                "--init",
                "he",
                "--data-dir",
                str(tmp_path / "data"),
                "-n",
                "1",
                "--bn",
                "calibrate",
                "--calibrate-batches",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_train_script_under_torchrun(tmp_path):
    """Two CPU processes (started by the script, then by torchrun) train, checkpoint, resume, and stop together."""
    import subprocess
    import sys
    from pathlib import Path

    _image_folder(tmp_path / "data")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "train_ghn.py"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    options = ["--data-dir", str(tmp_path / "data"), "--save-dir", str(tmp_path / "run"), "--quiet", "--threads", "1"]
    options += ["--batch-size", "4", "--meta-batch", "2", "--max-nodes", "300"]
    env = {**os.environ, "GHNINIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def run(*extra: str, plain: bool = False) -> str:
        start = [sys.executable, str(script), "--procs", "2"] if plain else torchrun
        out = subprocess.run([*start, *options, *extra], capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    # a plain `python train_ghn.py --procs 2` starts the two processes itself
    assert "2 process(es) on cpu" in run("--max-steps", "1", plain=True)
    # resumed with its CPU budget already spent: every rank stops before a step (none waits for the other)
    assert "--max-cpu-minutes 0.0 reached: step 1/3" in run("--max-steps", "3", "--max-cpu-minutes", "0")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 1
    assert ghninit.load_ghn(tmp_path / "run" / "final").config["num_classes"] == 10


def test_resumed_log_drops_redone_steps_and_upgrades_an_old_header(tmp_path):
    train_ghn = _load_script("train_ghn")
    fields = train_ghn.CSV_FIELDS
    old = ["step", "loss", "cpu_minutes"]  # an older, shorter header

    def new_row(step: int, cpu: float) -> str:
        return ",".join(str(step) if f == "step" else str(cpu) if f == "cpu_minutes" else "" for f in fields)

    lines = [",".join(old), "0,2.3,1.0", "1,2.2,2.0", "2,2.1,3.0", new_row(1, 2.5), new_row(3, 4.0), "4,2.0"]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    log_file, writer = train_ghn.open_log(tmp_path / "log.csv", resume_step=3)
    writer.writerow({"step": 3, "cpu_minutes": 9.0})
    log_file.close()
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert list(rows[0]) == fields
    assert [(r["step"], r["cpu_minutes"]) for r in rows] == [("0", "1.0"), ("1", "2.5"), ("2", "3.0"), ("3", "9.0")]


def test_train_script_help_documents_every_option(capsys):
    train_ghn = _load_script("train_ghn")
    with pytest.raises(SystemExit):
        train_ghn.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--meta-batch",
        "--no-ve",
        "--no-norm",
        "--no-ln",
        "--hypernet",
        "--max-minutes",
        "--lr-steps",
        "torchrun",
    ):
        assert option in text


def test_gpu_training_script_usage():
    """benchmarks/gpu_train_ghn.sh answers --help, and refuses a wrong argument count before doing anything."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_ghn.sh"
    ok = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "usage:" in ok.stdout and "BUDGET_SECONDS" in ok.stdout
    bad = subprocess.run(["bash", str(script), "only-one-argument"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr and bad.stdout == ""


def test_image_folder_cifar_is_in_a_fixed_mixed_order(tmp_path, monkeypatch):
    """Sequential test batches must mix classes: BatchNorm uses test-batch statistics."""
    from ghninit.training.data import load_cifar10

    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    _image_folder(tmp_path / "data", per_class=3)
    a = load_cifar10(tmp_path / "data", train=False)
    b = load_cifar10(tmp_path / "data", train=False)  # from the cache
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert len(set(a.labels[:10].tolist())) >= 4
    assert sorted(a.labels.tolist()) == sorted(list(range(10)) * 3)
    sub = a.subset(10)
    assert sorted(sub.labels.tolist()) == list(range(10))


def test_learning_rate_schedules():
    tiny = dict(meta_batch=1, epochs=1.0, lr=1.0)
    cosine = Trainer(TrainConfig(schedule="cosine", warmup_steps=4, **tiny), steps_per_epoch=20)
    factors = [cosine.lr_factor(s) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert factors[20] == pytest.approx(0.0, abs=1e-12) and factors[12] == pytest.approx(0.5)
    step = Trainer(TrainConfig(lr_steps=(0.5, 0.75), gamma=0.1, **tiny), steps_per_epoch=20)
    assert [step.lr_factor(s) for s in (0, 9, 10, 14, 15, 19)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    lrs = []
    for _ in range(6):  # the optimiser follows lr_factor step by step
        lrs.append(cosine.optimizer.param_groups[0]["lr"])
        cosine.scheduler.step()
    assert lrs == pytest.approx(factors[:6])


def _same_architectures(a: list, b: list) -> None:
    assert [x.spec for x in a] == [y.spec for y in b]
    for x, y in zip(a, b):
        assert x.graph.nodes == y.graph.nodes and np.array_equal(x.graph.edges, y.graph.edges)
        assert x.fallback.keys() == y.fallback.keys()
        assert all(torch.equal(x.fallback[k], y.fallback[k]) for k in x.fallback)


def test_prefetched_steps_equal_inline_steps_and_resume_exactly():
    config = dataclasses.replace(SMALL, max_nodes=380)  # small enough that some steps are redrawn
    torch.manual_seed(0)
    inline = [sample_meta_batch(config, step) for step in range(4)]
    first_draws = [meta_batch_indices(config.seed, step, 0, config.meta_batch, config.num_nets) for step in range(4)]
    assert any(indices != first for (indices, _), first in zip(inline, first_draws)), "no step was redrawn"
    prefetched = list(ArchitecturePrefetcher(config, 0, 4, workers=1))
    assert [p[0] for p in prefetched] == [0, 1, 2, 3]
    for (indices, archs), (_, p_indices, p_archs) in zip(inline, prefetched):
        assert indices == p_indices
        _same_architectures(archs, p_archs)
    resumed = list(ArchitecturePrefetcher(config, 2, 4, workers=2))  # resume at step 2, two workers
    assert [p[0] for p in resumed] == [2, 3]
    for (indices, archs), (_, r_indices, r_archs) in zip(inline[2:], resumed):
        assert indices == r_indices
        _same_architectures(archs, r_archs)
    # each process's share of a 2-process run is its slice of the one-process meta-batch
    for step in range(4):
        halves = [sample_meta_batch(config, step, rank, 2) for rank in (0, 1)]
        assert halves[0][0] + halves[1][0] == inline[step][0]


def test_prefetched_training_equals_inline_training():
    data = TrainBatches(_synthetic(16), batch_size=8, seed=0)
    losses = {}
    for mode in ("inline", "prefetch"):
        trainer = Trainer(SMALL, ghn=make_ghn(SMALL, seed=0))
        source = iter(ArchitecturePrefetcher(SMALL, 0, 2, workers=1)) if mode == "prefetch" else None
        losses[mode] = []
        for _ in range(2):
            prepared = next(source)[1:] if source else None
            losses[mode].append(trainer.train_step(*data.batch(trainer.step), prepared).loss)
    assert losses["prefetch"] == pytest.approx(losses["inline"], rel=1e-5)


def test_default_process_count_divides_the_meta_batch():
    default_procs = _load_script("train_ghn").default_procs
    assert default_procs(2, 8) == 2 and default_procs(16, 8) == 8 and default_procs(6, 8) == 4
    assert default_procs(2, 1) == 1 and default_procs(1, 8) == 1 and default_procs(0, 8) == 1
