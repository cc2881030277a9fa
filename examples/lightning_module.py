"""PyTorch Lightning: a LightningModule that starts from a GHN initialisation, once.

Where the call belongs: ``configure_model``. Lightning calls that hook at the start of every
``fit``, ``validate``, ``test`` and ``predict`` (and in ``load_from_checkpoint``), before it
restores a checkpoint and before ``configure_optimizers``. So build and initialise the network
there the first time only (``if self.net is not None: return``): a later ``validate``/``test``
keeps the trained weights, the optimiser is built on the initialised parameters, and a run
resumed with ``ckpt_path=`` gets the checkpoint's weights (they are restored after this hook).

    python examples/lightning_module.py                       # random tensors, shipped cifar10-mini GHN
    python examples/lightning_module.py --data-dir ../shared/data/cifar10-jpeg --max-steps 200
    python examples/lightning_module.py --resume runs/lightning/last.ckpt --max-steps 40

``--data-dir`` is an ImageFolder (with ``train/`` and ``test/`` subfolders, or one folder used for
both). The file is not called ``lightning.py``: run as a script, it would shadow the ``lightning``
package. Needs ``pip install ghninit[clients]`` (lightning).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

import ghninit


class GHNClassifier(L.LightningModule):
    """An image classifier (any ``torchvision.models`` name) initialised by a GHN in ``configure_model``."""

    def __init__(self, model: str = "resnet18", num_classes: int = 10, ghn: str = "cifar10-mini", lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net: torch.nn.Module | None = None  # built in configure_model

    def configure_model(self) -> None:
        if self.net is not None:  # every fit/validate/test calls this hook: initialise only the first time
            return
        self.net = torchvision.models.get_model(self.hparams.model, num_classes=self.hparams.num_classes)
        report = ghninit.initialize(self.net, ghn=self.hparams.ghn)
        print(report)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)


def datasets_for(data_dir: Path | None, image_size: int, num_classes: int) -> tuple[Dataset, Dataset]:
    """(train, validation): an ImageFolder's ``train/`` and ``test/`` (or the folder itself), else random tensors."""
    if data_dir is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(256, 3, image_size, image_size, generator=generator)
        labels = torch.randint(0, num_classes, (256,), generator=generator)
        return TensorDataset(images[:192], labels[:192]), TensorDataset(images[192:], labels[192:])
    tf = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
        ]
    )
    train = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    val = next((data_dir / d for d in ("test", "val") if (data_dir / d).is_dir()), train)
    return datasets.ImageFolder(str(train), transform=tf), datasets.ImageFolder(str(val), transform=tf)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="torchvision model name (default: resnet18)")
    parser.add_argument("--ghn", default="cifar10-mini", help="GHN name or path (default: cifar10-mini, shipped)")
    parser.add_argument("--data-dir", type=Path, help="ImageFolder root (default: random tensors)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=20, help="optimiser steps in all, resumed ones included")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches, random images (default 4)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/lightning"), help="where last.ckpt is written")
    parser.add_argument("--resume", type=Path, help="a Lightning checkpoint to resume from (trainer.fit(ckpt_path=))")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    train, val = datasets_for(args.data_dir, args.image_size, args.num_classes)
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))  # an ImageFolder is sorted by class
    val = Subset(val, order[: args.val_batches * args.batch_size].tolist())
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=args.batch_size)
    module = GHNClassifier(args.model, args.num_classes, args.ghn, args.lr)
    trainer = L.Trainer(
        max_steps=args.max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out_dir,
    )
    trainer.fit(module, loader, val_loader, ckpt_path=args.resume)
    trained = {k: v.detach().clone() for k, v in module.state_dict().items()}
    metrics = trainer.validate(module, val_loader, verbose=False)[0]
    kept = all(torch.equal(v, trained[k]) for k, v in module.state_dict().items())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(args.out_dir / "last.ckpt")
    print(f"steps {trainer.global_step}, val_loss {metrics['val_loss']:.3f}, val_acc {metrics['val_acc']:.3f}")
    print(f"weights after validate are the trained ones: {kept}")
    print(f"checkpoint: {args.out_dir / 'last.ckpt'}")
    return {**metrics, "global_step": trainer.global_step}


if __name__ == "__main__":
    main()
