"""Fine-tuning benchmarks: few-shot sampler, Penn-Fudan reader, backbone builders, and --quick runs end to end."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import torch
from conftest import REPO_DIR, SHARED_DIR, reference_file

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
import finetune_cifar10  # noqa: E402
import finetune_pennfudan  # noqa: E402
from finetune import data as finetune_data  # noqa: E402
from finetune import init as finetune_init  # noqa: E402
from finetune import models as finetune_models  # noqa: E402
from finetune import runs as finetune_runs  # noqa: E402

CIFAR_DIR = SHARED_DIR / "data" / "cifar10-jpeg"
PENNFUDAN_DIR = SHARED_DIR / "data" / "PennFudanPed"
requires_cifar = pytest.mark.skipif(not CIFAR_DIR.is_dir(), reason=f"{CIFAR_DIR} not found (../shared absent)")
requires_pennfudan = pytest.mark.skipif(
    not PENNFUDAN_DIR.is_dir(), reason=f"{PENNFUDAN_DIR} not found (../shared absent)"
)


def _darts_available() -> bool:
    try:
        from ghninit.deepnets import darts  # noqa: F401
    except ImportError:
        return False
    return True


requires_darts = pytest.mark.skipif(not _darts_available(), reason="ghninit.deepnets.darts is not available")


# -- few-shot sampler ---------------------------------------------------------------------------


def _labels(per_class: int = 30, classes: int = 10) -> list[int]:
    labels = [c for c in range(classes) for _ in range(per_class)]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(123)).tolist()
    return [labels[i] for i in order]


def test_few_shot_split_counts_and_disjoint():
    labels = _labels()
    split = finetune_data.few_shot_split(labels, shots=12, holdout=30, seed=4)
    assert Counter(labels[i] for i in split.train) == {c: 12 for c in range(10)}
    assert Counter(labels[i] for i in split.val) == {c: 3 for c in range(10)}
    assert Counter(labels[i] for i in split.fit) == {c: 9 for c in range(10)}
    assert len(set(split.train)) == 120
    assert not set(split.fit) & set(split.val)
    assert set(split.fit) | set(split.val) == set(split.train)


def test_few_shot_split_is_deterministic_and_seed_dependent():
    labels = _labels()
    state = torch.get_rng_state()
    a = finetune_data.few_shot_split(labels, 12, 30, seed=4)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be touched"
    assert a == finetune_data.few_shot_split(labels, 12, 30, seed=4)
    assert set(a.train) != set(finetune_data.few_shot_split(labels, 12, 30, seed=5).train)


def test_few_shot_split_rejects_bad_requests():
    labels = _labels(per_class=5)
    with pytest.raises(ValueError, match="multiple"):
        finetune_data.few_shot_split(labels, 4, 15, seed=0)
    with pytest.raises(ValueError, match="fewer than shots"):
        finetune_data.few_shot_split(labels, 6, 0, seed=0)
    with pytest.raises(ValueError, match="no image per class"):
        finetune_data.few_shot_split(labels, 4, 40, seed=0)


@requires_cifar
def test_few_shot_split_on_cifar10():
    train = finetune_data.load_cifar10(CIFAR_DIR, train=True)
    assert len(train) == 50_000
    split = finetune_data.few_shot_split(train.labels, shots=100, holdout=200, seed=0)
    assert Counter(train.labels[i] for i in split.train) == {c: 100 for c in range(10)}
    assert Counter(train.labels[i] for i in split.val) == {c: 20 for c in range(10)}
    assert len(split.fit) == 800 and not set(split.fit) & set(split.val)
    images = train.read(split.val[:4])
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8


def test_load_cifar10_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        finetune_data.load_cifar10(tmp_path, train=True)


def test_augment_keeps_shape_and_is_seeded():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = finetune_data.augment(images, torch.Generator().manual_seed(0))
    b = finetune_data.augment(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)


# -- Penn-Fudan reader ----------------------------------------------------------------------------


@requires_pennfudan
def test_pennfudan_boxes_from_masks_match_annotations():
    from torchvision.ops import box_iou

    dataset = finetune_data.PennFudan(PENNFUDAN_DIR)
    assert len(dataset) == 170
    exact, pedestrians = 0, 0
    for image in dataset.images:
        mask = finetune_data.read_image(PENNFUDAN_DIR / "PedMasks" / f"{image.stem}_mask.png")[0]
        ids, boxes = finetune_data.boxes_from_mask(mask)
        annotated = finetune_data.read_annotation_boxes(PENNFUDAN_DIR / "Annotation" / f"{image.stem}.txt")
        assert ids.tolist() == list(range(1, len(ids) + 1)), image.name
        assert len(boxes) == len(annotated), image.name
        # The annotation files were drawn by hand around the masks: 157 of 170 images agree to
        # the pixel, the others within a few pixels (IoU >= 0.93).
        assert box_iou(boxes, annotated).diagonal().min() > 0.9, image.name
        exact += torch.equal(boxes, annotated)
        pedestrians += len(boxes)
    assert pedestrians == 423
    assert exact >= 150


@requires_pennfudan
def test_pennfudan_item_and_split():
    dataset = finetune_data.PennFudan(PENNFUDAN_DIR)
    image, target = dataset[0]  # FudanPed00001: two pedestrians, annotation (160, 182) - (302, 431), ...
    assert image.shape == (3, 536, 559) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].tolist() == [[159.0, 181.0, 301.0, 430.0], [419.0, 170.0, 534.0, 485.0]]
    assert target["labels"].tolist() == [1, 1]
    train, test = finetune_data.pennfudan_split(len(dataset))
    assert len(train) == 120 and len(test) == 50 and sorted(train + test) == list(range(170))
    with torch.random.fork_rng():  # the tutorial's torch.manual_seed(1); torch.randperm(170)
        torch.manual_seed(1)
        assert torch.randperm(170).tolist() == train + test


def _write_png(path, array):
    from PIL import Image

    array = torch.as_tensor(array, dtype=torch.uint8)
    Image.fromarray(array[0].numpy() if len(array) == 1 else array.permute(1, 2, 0).numpy()).save(path)


def test_pennfudan_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="PennFudanPed"):
        finetune_data.find_pennfudan(tmp_path)
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    _write_png(tmp_path / "PNGImages" / "A.png", torch.zeros(3, 8, 8))
    with pytest.raises(FileNotFoundError, match="A_mask.png"):
        finetune_data.PennFudan(tmp_path)
    (tmp_path / "PedMasks" / "A_mask.png").write_bytes(b"not a png")
    dataset = finetune_data.PennFudan(finetune_data.find_pennfudan(tmp_path))
    with pytest.raises(ValueError, match="A_mask.png"):
        dataset[0]
    _write_png(tmp_path / "PedMasks" / "A_mask.png", torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="no pedestrian"):
        dataset[0]
    _write_png(tmp_path / "PedMasks" / "A_mask.png", torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match="does not match"):
        dataset[0]
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:5, 1:3] = 1
    _write_png(tmp_path / "PedMasks" / "A_mask.png", mask)
    assert dataset[0][1]["boxes"].tolist() == [[1.0, 2.0, 2.0, 4.0]]


def test_hflip_moves_boxes_with_pixels():
    mask = torch.zeros(6, 10, dtype=torch.uint8)
    mask[1:4, 2:5] = 1
    _, boxes = finetune_data.boxes_from_mask(mask)
    image = mask[None].float()
    flipped, target = finetune_data.hflip(image, {"boxes": boxes})
    assert torch.equal(target["boxes"], finetune_data.boxes_from_mask(flipped[0].to(torch.uint8))[1])


# -- initialisation and backbone builders ---------------------------------------------------------


def test_he_init_scales_by_fan_in():
    torch.manual_seed(0)
    model = finetune_models.build_classifier("resnet50", 10, cifar=True)
    finetune_init.he_init_(model)
    conv = model.layer3[0].conv2.weight  # 256 x 256 x 3 x 3
    assert conv.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    assert torch.all(model.fc.bias == 0)


def test_cifar_classifiers_take_32x32():
    torch.manual_seed(0)
    resnet = finetune_models.build_classifier("resnet50", 10, cifar=True)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    vit = finetune_models.build_classifier("vit", 10, cifar=True)
    with torch.no_grad():
        assert vit.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert finetune_models.cut_before_global_pool(resnet).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2048, 4, 4)


def test_ghn_initialise_keeps_a_fresh_classifier_when_classes_differ():
    ghn, info = finetune_init.resolve_ghn(str(reference_file("ghn2_cifar10_random.safetensors")))
    assert info["num_classes"] == 10 and len(info["sha256"]) == 64
    torch.manual_seed(0)
    he = finetune_models.build_classifier("vit", 7, cifar=True)
    finetune_init.initialise(he, "he")
    torch.manual_seed(0)
    model = finetune_models.build_classifier("vit", 7, cifar=True)
    report = finetune_init.initialise(model, "ghn", ghn)
    assert not report.classifier_predicted
    assert torch.equal(model.heads.head.weight, he.heads.head.weight)  # the same fresh He layer
    assert not torch.equal(model.encoder.layers[0].mlp[0].weight, he.encoder.layers[0].mlp[0].weight)


def test_resolve_ghn_unknown_name_says_what_was_tried():
    import ghninit

    with pytest.raises(ghninit.GHNLoadError, match="not-a-ghn"):
        finetune_init.resolve_ghn("./not-a-ghn.safetensors")


def _strides(backbone, size=(96, 128)):
    with torch.no_grad():
        maps = backbone.eval()(torch.zeros(1, 3, *size))
    return {name: size[0] // m.shape[-2] for name, m in maps.items()}, maps


def test_detection_backbones():
    torch.manual_seed(0)
    resnet = finetune_models.build_detection_backbone("resnet50", finetune_models.build_classifier("resnet50", 10, cifar=False))
    assert _strides(resnet, (64, 64))[0] == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    mobilenet = finetune_models.build_classifier("mobilenet", 10, cifar=False)
    backbone = finetune_models.build_detection_backbone("mobilenet", mobilenet)
    assert backbone.out_channels == 256
    assert _strides(backbone, (128, 128))[0] == {"0": 16, "1": 32, "pool": 64}
    # The generic cut (used for DARTS) gives the map the classifier pools.
    generic = finetune_models.build_detection_backbone("any-network", mobilenet)
    assert generic.out_channels == 960
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        assert torch.equal(generic.eval()(x)["0"], mobilenet.eval().features(x))
    vit = finetune_models.build_detection_backbone("vit", finetune_models.build_classifier("vit", 10, cifar=False))
    strides, maps = _strides(vit, (96, 160))  # not the 224x224 the ViT was built for
    assert strides == {"0": 16} and maps["0"].shape == (1, 192, 6, 10)


def test_detector_trains_and_predicts():
    torch.manual_seed(0)
    classifier = finetune_models.build_classifier("mobilenet", 10, cifar=False)
    finetune_init.he_init_(classifier)
    detector = finetune_models.build_detector(
        finetune_models.build_detection_backbone("mobilenet", classifier), 2, max_size=96, rois_per_image=16
    )
    target = {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])}
    losses = detector.train()([torch.rand(3, 100, 80)], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = detector.eval()([torch.rand(3, 100, 80)])
    assert out[0]["boxes"].shape[1] == 4


def test_darts_unavailable_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ghninit.deepnets", None)  # import now raises ImportError
    with pytest.raises(finetune_models.ArchitectureUnavailable, match="ghninit.deepnets"):
        finetune_models.build_classifier("darts", 10, cifar=True)
    with pytest.raises(finetune_models.ArchitectureUnavailable, match="--archs darts"):
        finetune_models.available_archs(["vit", "darts"], finetune_models.CIFAR_ARCHS, cifar=True)
    assert finetune_models.available_archs(None, ("vit", "darts"), cifar=True) == ["vit"]
    assert "skipping darts" in capsys.readouterr().err


@requires_darts
def test_darts_builders():
    torch.manual_seed(0)
    net = finetune_models.build_classifier("darts", 10, cifar=True)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    backbone = finetune_models.build_detection_backbone("darts", finetune_models.build_classifier("darts", 10, cifar=False))
    strides, _ = _strides(backbone, (64, 64))
    assert list(strides) == ["0"] and backbone.out_channels > 0


# -- results ------------------------------------------------------------------------------------


def test_run_store_resumes_and_refuses_other_configs(tmp_path):
    store = finetune_runs.RunStore(tmp_path)
    config = {"epochs": 2, "lrs": (0.1,)}
    assert store.load("vit", "he", 0, config) is None
    store.save({"arch": "vit", "init": "he", "seed": 0, "config": {"epochs": 2, "lrs": [0.1]}, "final": 1.0})
    assert store.load("vit", "he", 0, config)["final"] == 1.0
    with pytest.raises(finetune_runs.ConfigMismatch, match="epochs"):
        store.load("vit", "he", 0, {"epochs": 3, "lrs": [0.1]})
    assert finetune_runs.RunStore(tmp_path, overwrite=True).load("vit", "he", 0, config) is None
    # GHN runs are filed by their GHN's weights: another GHN is another run, not a mismatch.
    a, b = {**config, "ghn": "a" * 64}, {**config, "ghn": "b" * 64}
    store.save({"arch": "vit", "init": "ghn", "seed": 0, "config": a, "final": 2.0})
    assert store.path("vit", "ghn", 0, a).name == "vit-ghn-aaaaaaaaaaaa-seed0.json"
    assert store.load("vit", "ghn", 0, a)["final"] == 2.0 and store.load("vit", "ghn", 0, b) is None


def test_mean_std():
    assert finetune_runs.mean_std([1.0]) == (1.0, 0.0)
    assert finetune_runs.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))


# -- the scripts, end to end ---------------------------------------------------------------------


@requires_cifar
def test_finetune_cifar10_quick_end_to_end(tmp_path, monkeypatch):
    ghn = str(reference_file("ghn2_cifar10_random.safetensors"))
    argv = ["--quick", "--archs", "vit", "--data-dir", str(CIFAR_DIR), "--ghn", ghn, "--shots", "3", "--holdout", "10"]
    argv += ["--lrs", "0.01", "0.1", "--epochs", "2", "--search-epochs", "1", "--test-limit", "30", "--threads", "1"]
    summary = finetune_cifar10.main([*argv, "--out-dir", str(tmp_path / "a")])
    assert set(summary) == {"vit"} and set(summary["vit"]) == {"he", "ghn", "ghn-orth", "orth"}  # default: all
    for suffix in ("json", "md", "png"):
        assert (tmp_path / "a" / f"finetune_cifar10.{suffix}").stat().st_size > 0
    (post,) = (tmp_path / "a" / "runs").glob("vit-ghn-orth-*-orth-seed0.json")
    assert json.loads(post.read_text())["ghn_report"]["postprocess"].startswith("orthogonalize(")
    assert (tmp_path / "a" / "runs" / "vit-orth-orth-seed0.json").is_file()
    assert "ghn-orth - He (paired)" in (tmp_path / "a" / "finetune_cifar10.md").read_text()
    (path,) = (tmp_path / "a" / "runs").glob("vit-ghn-[0-9a-f]*-seed0.json")
    run = json.loads(path.read_text())
    assert [g["lr"] for g in run["grid"]] == [0.01, 0.1] and run["lr"] in (0.01, 0.1)
    assert run["curve"]["epochs"] == [1, 2] and run["ghn_report"]["classifier_predicted"]
    assert "| vit |" in (tmp_path / "a" / "finetune_cifar10.md").read_text()
    # Deterministic for a seed: a second run elsewhere gives the same numbers.
    again = finetune_cifar10.main([*argv, "--out-dir", str(tmp_path / "b"), "--init", "ghn"])
    assert again["vit"]["ghn"]["values"] == summary["vit"]["ghn"]["values"]
    # Resumable: finished seeds are read back, not trained again.
    monkeypatch.setattr(finetune_cifar10, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert finetune_cifar10.main([*argv, "--out-dir", str(tmp_path / "a")]) == summary
    # --report-only: the finished seed is reported, the unfinished seed 1 is left out, nothing trains.
    only = finetune_cifar10.main([*argv, "--out-dir", str(tmp_path / "a"), "--seeds", "0", "1", "--report-only"])
    assert only == summary
    with pytest.raises(SystemExit, match="nothing to report"):
        finetune_cifar10.main([*argv, "--out-dir", str(tmp_path / "a"), "--seeds", "1", "--report-only"])


@requires_pennfudan
def test_finetune_pennfudan_quick_end_to_end(tmp_path):
    ghn = str(reference_file("ghn2_cifar10_random.safetensors"))
    argv = ["--quick", "--archs", "mobilenet", "--data-dir", str(PENNFUDAN_DIR.parent), "--ghn", ghn]
    argv += ["--train-limit", "2", "--test-limit", "2", "--max-size", "96", "--rois-per-image", "16"]
    summary = finetune_pennfudan.main([*argv, "--out-dir", str(tmp_path), "--threads", "1", "--init", "he", "ghn", "ghn-orth"])
    assert set(summary["mobilenet"]) == {"he", "ghn", "ghn-orth"}
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"finetune_pennfudan.{suffix}").stat().st_size > 0
    (path,) = (tmp_path / "runs").glob("mobilenet-ghn-[0-9a-f]*-seed0.json")
    run = json.loads(path.read_text())
    assert run["curve"]["epochs"] == [1] and 0 <= run["final"] <= 100
    assert run["config"]["train_images"] == 2 and run["config"]["max_size"] == 96


def test_learning_rate_schedule_matches_the_tutorial():
    lr = finetune_pennfudan.learning_rate
    assert lr(0.005, 0, 0, 60, 3) == pytest.approx(0.005 / 1000)
    assert lr(0.005, 0, 59, 60, 3) == pytest.approx(0.005)
    assert lr(0.005, 2, 0, 60, 3) == pytest.approx(0.005)
    assert lr(0.005, 3, 0, 60, 3) == pytest.approx(0.0005)


def test_init_diagnostics_measure_one_batch():
    import init_diagnostics

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 10
    model(images)  # materialise the lazy layer
    stats = init_diagnostics.diagnose(model, images, labels)
    assert set(stats["output_std"]) == {"0", "1", "2", "3"}
    assert stats["output_std"]["3"] == pytest.approx(stats["logit_std"])
    assert {name for name, norm in stats["block_grad"].items() if norm > 0} == {"0", "3"} and stats["grad_total"] > 0
    grads = [p.grad.norm() ** 2 for p in model.parameters()]
    assert stats["grad_total"] == pytest.approx(torch.stack(grads).sum().sqrt().item())
    assert stats["loss"] == pytest.approx(torch.nn.functional.cross_entropy(model(images), labels).item())


def test_same_task_warning_names_a_ghn_trained_on_the_fine_tuning_data():
    assert finetune_init.trained_on("cifar10-mini") == "cifar10"
    assert finetune_init.trained_on("imagenet") == "imagenet"
    assert finetune_init.trained_on("./some-file.safetensors") is None
    info = {"source": "cifar10-mini", "trained_on": "cifar10"}
    assert "trained on cifar10 itself" in finetune_init.same_task_warning(info, "cifar10")
    assert finetune_init.same_task_warning({"source": "imagenet", "trained_on": "imagenet"}, "cifar10") is None
    assert finetune_init.same_task_warning(None, "cifar10") is None


def test_same_task_warning_reads_the_card_of_a_trained_ghn(tmp_path):
    """A GHN trained with `python -m ghninit train` names its data in final/training.json."""
    from pathlib import Path

    from ghninit.training.card import write_card
    from ghninit.training.data import CIFAR10_CLASSES

    write_card(tmp_path, {"data": {"name": "cifar10-jpeg", "classes": list(CIFAR10_CLASSES)}})
    assert finetune_init.trained_on(str(tmp_path), Path(tmp_path)) == "cifar10"
    write_card(tmp_path, {"data": {"name": "xrays", "classes": ["a", "b"]}})
    assert finetune_init.trained_on(str(tmp_path), Path(tmp_path)) == "xrays"
    assert finetune_init.trained_on(str(tmp_path / "nothing"), tmp_path / "nothing") is None
