"""Hugging Face ``Trainer``: a model built from a config, initialised by a GHN, trained, saved and reloaded.

``AutoModelForImageClassification.from_config(config)`` builds the model with its own random
initialisation; one ``ghninit.initialize`` call replaces it with the GHN's prediction, before the
``Trainer`` (which builds the optimiser when training starts) sees the model. Training, then
``save_pretrained``/``from_pretrained``, work as for any model: the result is an ordinary
checkpoint. The default config is a tiny ViT for 32 x 32 images (75 k parameters).

    python examples/hf_trainer.py                                  # random tensors, shipped cifar10-mini GHN
    python examples/hf_trainer.py --data-dir ../shared/data/cifar10-jpeg --max-steps 200

``--data-dir`` is an ImageFolder (with ``train/`` and ``test/`` subfolders, or one folder used
for both). Needs ``pip install ghninit[clients]`` (accelerate, which ``Trainer`` requires) and
transformers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, ViTConfig

import ghninit


class PixelValues(Dataset):
    """``(image, label)`` pairs as the ``{"pixel_values", "labels"}`` dicts a Hugging Face image model takes."""

    def __init__(self, pairs: Dataset):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        image, label = self.pairs[i]
        return {"pixel_values": image, "labels": int(label)}


class RandomImages(Dataset):
    """``n`` random images with random labels (a fixed seed): runs anywhere, learns nothing."""

    def __init__(self, n: int, image_size: int, num_classes: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def datasets_for(data_dir: Path | None, image_size: int, num_classes: int) -> tuple[Dataset, Dataset]:
    """(train, evaluation): an ImageFolder's ``train/`` and ``test/`` (or the folder itself), else random tensors."""
    if data_dir is None:
        return PixelValues(RandomImages(192, image_size, num_classes)), PixelValues(
            RandomImages(64, image_size, num_classes, seed=1)
        )
    tf = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # ViTImageProcessor's defaults
        ]
    )
    train = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    test = next((data_dir / d for d in ("test", "val") if (data_dir / d).is_dir()), train)
    return PixelValues(datasets.ImageFolder(str(train), transform=tf)), PixelValues(
        datasets.ImageFolder(str(test), transform=tf)
    )


def tiny_vit_config(image_size: int, num_classes: int) -> ViTConfig:
    """A small ViT (2 layers, width 64, 4 x 4 patches), trainable on a CPU in seconds."""
    return ViTConfig(
        image_size=image_size,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=num_classes,
    )


def accuracy(prediction) -> dict[str, float]:
    """The ``compute_metrics`` of the ``Trainer``: top-1 accuracy of an ``EvalPrediction``."""
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", default="cifar10-mini", help="GHN name or path (default: cifar10-mini, shipped)")
    parser.add_argument("--data-dir", type=Path, help="ImageFolder root (default: random tensors)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--eval-batches", type=int, default=4, help="evaluation batches, random images (default 4)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/hf_trainer"), help="where the model is saved")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(tiny_vit_config(args.image_size, args.num_classes))
    print(ghninit.initialize(model, ghn=args.ghn))  # <- the only new line: before the Trainer builds the optimiser

    train, test = datasets_for(args.data_dir, args.image_size, args.num_classes)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))  # an ImageFolder is sorted by class
    test = torch.utils.data.Subset(test, order[: args.eval_batches * args.batch_size].tolist())
    training_args = TrainingArguments(
        output_dir=str(args.out_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0,
        logging_steps=max(1, args.max_steps // 4),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=test, compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()

    saved = args.out_dir / "model"
    model.save_pretrained(saved)
    reloaded = AutoModelForImageClassification.from_pretrained(saved)
    images = torch.stack([test[i]["pixel_values"] for i in range(min(4, len(test)))]).to(model.device)
    model.eval()
    with torch.no_grad():
        same = torch.equal(model(pixel_values=images).logits.cpu(), reloaded(pixel_values=images).logits)
    print(
        f"steps {trainer.state.global_step}, eval_loss {metrics['eval_loss']:.3f}, "
        f"eval_accuracy {metrics['eval_accuracy']:.3f}"
    )
    print(f"saved to {saved}; reloaded with from_pretrained, same logits: {same}")
    return {**metrics, "global_step": trainer.state.global_step, "same_logits": same}


if __name__ == "__main__":
    main()
