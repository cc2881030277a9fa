"""Convert an official GHN-2 checkpoint (ppuda ``.pt``) into ghninit's Hub layout.

    python hub/convert_ppuda.py ghn2_imagenet.pt out/ghn2-imagenet

reads SRC.pt with ``torch.load(weights_only=True)`` only (tensors and plain containers, no code),
writes OUT_DIR/config.json, OUT_DIR/model.safetensors (``GHN2.save_pretrained``, the
huggingface_hub mixin) and a model card OUT_DIR/README.md, then checks that the converted folder
holds exactly the same tensors and predicts exactly the same parameters as the ``.pt`` loaded
directly. OUT_DIR appears only once that check has passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The official checkpoints of the reference repository (github.com/facebookresearch/ppuda,
# checkpoints/ folder) and the accuracies its README publishes for them ("Available GHNs" table,
# read at commit 04188590c0c26c2fa0a7f4d13ba3f962cd1fcb90): accuracy of networks whose parameters
# are all predicted by the GHN, without any training; top-1 on CIFAR-10, top-5 on ImageNet.
REFERENCE = "https://github.com/facebookresearch/ppuda"
DATASETS = {
    "imagenet": {
        "official_file": "ghn2_imagenet.pt",
        "title": "GHN-2 trained on ImageNet",
        "num_classes": 1000,
        "hf_dataset": "imagenet-1k",
        "images": "ImageNet (ILSVRC 2012) training images, 1000 classes",
        "metric": "top-5 accuracy (%) on the ImageNet validation set",
        "resnet50": "5.3",
        "best": "48.3 (architecture 85)",
        "example": 'model = torchvision.models.resnet50()\nghninit.initialize(model, dataset="imagenet")',
    },
    "cifar10": {
        "official_file": "ghn2_cifar10.pt",
        "title": "GHN-2 trained on CIFAR-10",
        "num_classes": 10,
        "hf_dataset": "cifar10",
        "images": "CIFAR-10 training images (32x32, 10 classes)",
        "metric": "top-1 accuracy (%) on the CIFAR-10 test set",
        "resnet50": "58.6",
        "best": "77.1 (architecture 210)",
        "example": (
            "from ghninit.adapt import adapt_to_cifar\n"
            "model = adapt_to_cifar(torchvision.models.resnet50(num_classes=10))  # 32x32 inputs\n"
            'ghninit.initialize(model, dataset="cifar10")'
        ),
    },
}

CARD = """\
# {title} (ghninit format)

A Graph HyperNetwork (GHN-2) that predicts all parameters of a neural network from its
computational graph in one forward pass, so that a network can start from predicted parameters
instead of a random initialisation. These are the weights of the reference implementation,
unchanged, in the layout of `huggingface_hub.PyTorchModelHubMixin` (`config.json` +
`model.safetensors`), for the [ghninit]({library_url}) library:

```python
import ghninit, torchvision
{example}
ghn = ghninit.load_ghn("{dataset}")   # or ghninit.load_ghn("<this repo id>", revision="<commit>")
```

## Source

- Paper: Boris Knyazev, Michal Drozdzal, Graham W. Taylor, Adriana Romero-Soriano.
  *Parameter Prediction for Unseen Deep Architectures*. NeurIPS 2021.
  [arXiv:2110.13100](https://arxiv.org/abs/2110.13100),
  [OpenReview](https://openreview.net/forum?id=vqHak8NLk25).
- Reference code and original checkpoint: [{reference}]({reference}) (`checkpoints/{official_file}`).
- Converted from `{source_file}` (sha256 `{source_sha256}`, epoch {epoch}) by
  `hub/convert_ppuda.py` of ghninit {ghninit_version}. Tensor names and values are unchanged:
  only the container changed, from a pickle to safetensors and JSON. The conversion checked that
  this folder predicts exactly the same parameters as the `.pt` file.{caveat}
- `model.safetensors`: sha256 `{weights_sha256}`, {n_params:,} parameters.

## License

MIT: the license of the reference repository ({reference}, file `LICENSE`,
Copyright (c) Facebook, Inc.), where the original checkpoint is distributed.

## Training data

GHN-2 was trained on the training split of DeepNets-1M (one million generated network
architectures, from the same paper) for image classification on {images}. The GHN holds no
images; the data set determines which classes and input sizes its predictions suit.

## Published accuracy

As published by the reference README ("Available GHNs"), not re-measured here: {metric} of
networks whose parameters are all predicted by this GHN, without any training. Batch-norm
statistics are computed on the evaluation data.

| GHN | ResNet-50 (unseen architecture) | Best DeepNets-1M test architecture (index) |
|---|---:|---:|
| {title} | {resnet50} | {best} |

Predicted parameters are meant as an initialisation to train or fine-tune from.

## Config

```json
{config}
```
"""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    from ghninit.hub import file_sha256

    return file_sha256(path)


def build_model(name: str, dataset: str):
    """A torchvision model for the prediction check, adapted to 32x32 inputs for CIFAR-10."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=DATASETS[dataset]["num_classes"])
    if dataset == "cifar10":
        from ghninit.adapt import adapt_to_cifar

        adapt_to_cifar(model)
    return model


def verify(src: Path, folder: Path, dataset: str, models: list[str]) -> list[str]:
    """Compare the converted folder with the ``.pt`` loaded directly: tensors, then predictions.

    Returns:
        one line per model checked; raises ``AssertionError`` on any difference.
    """
    import torch

    from ghninit.hub import ghn_from_reference_checkpoint, load_ghn

    direct, converted = ghn_from_reference_checkpoint(src).eval(), load_ghn(folder)
    a, b = direct.state_dict(), converted.state_dict()
    assert a.keys() == b.keys(), f"different tensors: {sorted(a.keys() ^ b.keys())}"
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"tensor {key} differs"
    assert direct.config == converted.config, f"config {converted.config} != {direct.config}"
    lines = []
    for name in models:
        model = build_model(name, dataset)
        want = direct.predict(model, predict_classifier=True)
        got = converted.predict(model, predict_classifier=True)
        assert want.keys() == got.keys(), f"{name}: predicted sets differ"
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}: prediction for {key} differs"
        lines.append(f"{name}: {len(want)} tensors, {sum(t.numel() for t in want.values()):,} values, identical")
    return lines


def convert(src: Path, out: Path, dataset: str | None = None, models: list[str] = ("resnet18",), overwrite=False):
    """Convert ``src`` into ``out`` (see the module docstring); returns a summary dict."""
    import torch

    import ghninit
    from ghninit.hub import GHNLoadError, ghn_from_reference_checkpoint

    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"{out} exists and is not empty; pass --overwrite to replace it")
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)  # no code is unpickled
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GHNLoadError(f"{src}: not a reference GHN checkpoint ({{'state_dict', 'config', 'epoch'}})")
    ghn = ghn_from_reference_checkpoint(src)
    if dataset is None:
        dataset = {info["num_classes"]: name for name, info in DATASETS.items()}.get(ghn.num_classes)
        if dataset is None:
            raise SystemExit(f"{src}: {ghn.num_classes} classes; pass --dataset imagenet or cifar10")
    info = DATASETS[dataset]
    source_sha256 = sha256_file(src)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        ghn.save_pretrained(stage, config=ghn.config)
        caveat = (
            ""
            if src.name == info["official_file"]
            else f"\n  Note: `{src.name}` is not named like the official `{info['official_file']}`; "
            "the published accuracy below is that of the official checkpoint."
        )
        card = CARD.format(
            **info,
            dataset=dataset,
            library_url="https://github.com/ghninit/ghninit",
            reference=REFERENCE,
            source_file=src.name,
            source_sha256=source_sha256,
            epoch=checkpoint.get("epoch", "unknown"),
            ghninit_version=ghninit.__version__,
            caveat=caveat,
            weights_sha256=sha256_file(stage / "model.safetensors"),
            n_params=sum(p.numel() for p in ghn.parameters()),
            config=json.dumps(ghn.config, indent=2),
        )
        metadata = {
            "library_name": "ghninit",
            "license": "mit",
            "tags": ["ghn2", "graph-hypernetwork", "parameter-prediction", "pytorch_model_hub_mixin"],
            "datasets": [info["hf_dataset"]],
            "source_file": src.name,
            "source_sha256": source_sha256,
        }
        from huggingface_hub import ModelCard, ModelCardData

        ModelCard(f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n\n{card}").save(stage / "README.md")
        checks = verify(src, stage, dataset, list(models))
        os.chmod(stage, 0o755)  # mkdtemp made it private
        for path in stage.iterdir():
            os.chmod(path, 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {
        "dataset": dataset,
        "out": str(out),
        "source_sha256": source_sha256,
        "weights_sha256": sha256_file(out / "model.safetensors"),
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(
        description="Convert an official GHN-2 checkpoint (ppuda .pt) into the ghninit Hub layout "
        "(config.json + model.safetensors + README.md model card) and verify it predicts identically.",
    )
    parser.add_argument("src", type=Path, metavar="SRC.pt", help="reference checkpoint, e.g. ghn2_imagenet.pt")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write (must be absent or empty)")
    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), help="training data set (default: inferred from the class count)"
    )
    parser.add_argument(
        "--verify-models",
        default="resnet18",
        help="comma-separated torchvision models whose predictions must match (default: resnet18)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)

    summary = convert(args.src, args.out, args.dataset, [m for m in args.verify_models.split(",") if m], args.overwrite)
    print(f"converted {args.src} ({summary['dataset']}, sha256 {summary['source_sha256']}) -> {summary['out']}")
    for line in summary["checks"]:
        print(f"  verified {line}")
    print(f"  model.safetensors sha256 {summary['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    sys.exit(main())
