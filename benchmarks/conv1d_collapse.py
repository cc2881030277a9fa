"""Which 1-D kernel to take from a predicted square (k, k) kernel: its rows summed, averaged, or the middle row.

For 8 ``Conv1d`` layers (in 1-256, k 2-15), the shipped ``cifar10-mini`` GHN predicts the square
2-D kernels (as ``initialize`` does); for each choice, the std of the 1-D kernel over He's
``sqrt(2 / (in * k))``, and the rms of a unit-variance signal after the 8-layer ReLU stack
initialised that way. For comparison, the same GHN's own ``Conv2d`` (k, k) kernels over He's
``sqrt(2 / (in * k * k))``. ghninit sums the rows (``ghninit.write.tensors.collapse``).

    python benchmarks/conv1d_collapse.py
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402
from ghninit.write.tensors import tile  # noqa: E402

LAYERS = [
    (1, 64, 10),
    (64, 64, 3),
    (64, 64, 3),
    (64, 128, 5),
    (128, 128, 7),
    (128, 128, 2),
    (128, 256, 9),
    (256, 256, 15),
]


def _stack(conv: type) -> nn.Sequential:
    return nn.Sequential(*[m for i, o, k in LAYERS for m in (conv(i, o, k, padding=k // 2, bias=False), nn.ReLU())])


def _choices(block: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    rows = torch.stack([block[:, :, r % block.shape[2]] for r in range(k)], 2)  # rows of the tiled (k, k) kernel
    return {"sum": rows.sum(2), "mean": rows.mean(2), "middle": rows[:, :, k // 2]}


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.manual_seed(0)
    ghn = ghninit.load_ghn("cifar10-mini")
    net = _stack(nn.Conv1d)
    graph = ghn.build_graph(net, example_inputs=torch.randn(1, 1, 2000))
    blocks = {n: b for n, (b, _) in ghn.predict_blocks(graph, True).items()}
    ratios: dict[str, list[float]] = {c: [] for c in ("sum", "mean", "middle")}
    weights: dict[str, dict[str, torch.Tensor]] = {c: {} for c in ratios}
    for (name, p), (i, _, k) in zip(net.named_parameters(), LAYERS):
        for choice, w in _choices(blocks[name], k).items():
            weights[choice][name] = tile(w, p.shape)
            ratios[choice].append(weights[choice][name].std().item() / math.sqrt(2 / (i * k)))
        print(f"{name:9s} in={i:3d} k={k:2d}  " + "  ".join(f"{c} {r[-1]:.2f}" for c, r in ratios.items()))
    x = torch.randn(8, 1, 2000)
    for choice in ratios:
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(weights[choice][name])
            rms = net(x).pow(2).mean().sqrt().item()
        print(f"{choice}: std / He {min(ratios[choice]):.2f}-{max(ratios[choice]):.2f}; stack output rms {rms:.3g}")
    net2 = _stack(nn.Conv2d)
    predicted = ghn(ghn.build_graph(net2), True)
    spread = [
        predicted[n].std().item() / math.sqrt(2 / (i * k * k))
        for (n, _), (i, _, k) in zip(net2.named_parameters(), LAYERS)
    ]
    print(f"the GHN's own Conv2d kernels: std / He {min(spread):.2f}-{max(spread):.2f}")


if __name__ == "__main__":
    main()
