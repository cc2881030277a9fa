"""Cell genotypes of the DeepNets-1M space: what each cell computes, independent of channel counts.

A genotype describes a normal cell and a reduction cell in the style of DARTS (Liu et al., 2019):
each cell has two input states (the outputs of the two previous cells) and ``steps`` intermediate
nodes. Node ``k`` (state index ``k + 2``) sums two operations, each applied to one earlier state;
the cell's output concatenates the states listed in ``*_concat`` along channels.

DeepNets-1M (Knyazev et al., 2021, appendix A.1) extends the DARTS operation set with dense
convolutions, squeeze-and-excitation and multi-head self-attention, and lets an operation be
``none`` (the zero operation), which makes sparse cells possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Operation names: (kind, kernel size); the kernel size is 0 for parameter-free/size-free ops.
OPERATIONS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_1x1",
    "conv_7x1_1x7",
    "conv_3x3",
    "conv_5x5",
    "conv_7x7",
    "msa",
    "cse",
)
#: Operations without learnable parameters: a reduction cell of an "only pool" network uses these.
PARAMETER_FREE: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
#: Dense convolutions with large kernels (memory hungry: at most one per cell).
LARGE_CONVS: tuple[str, ...] = ("conv_5x5", "conv_7x7")

Edge = tuple[str, int]  # (operation, index of the input state)


@dataclass(frozen=True)
class Genotype:
    """Normal and reduction cells.

    Attributes:
        normal: ``2 * steps`` edges ``(operation, input state)``; edges ``2k`` and ``2k + 1``
            feed intermediate node ``k`` (state ``k + 2``).
        normal_concat: states concatenated to form the cell's output.
        reduce: the reduction cell's edges, same layout.
        reduce_concat: the reduction cell's output states.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    name: str = field(default="", compare=False)

    @property
    def steps(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal) // 2

    @property
    def ops(self) -> list[str]:
        """All operations of both cells."""
        return [op for op, _ in self.normal + self.reduce]

    @property
    def has_msa(self) -> bool:
        """Whether the network is a vision transformer (ViT-style stem, no spatial reductions)."""
        return "msa" in self.ops

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Genotype:
        """Inverse of :meth:`to_dict` (also accepts the reference repository's JSON genotypes)."""
        return cls(
            normal=tuple((str(op), int(i)) for op, i in d["normal"]),
            normal_concat=tuple(int(i) for i in d["normal_concat"]),
            reduce=tuple((str(op), int(i)) for op, i in d["reduce"]),
            reduce_concat=tuple(int(i) for i in d["reduce_concat"]),
        )


def parse_operation(name: str) -> tuple[str, int]:
    """Split an operation name into its kind and largest kernel size.

    ``"sep_conv_5x5" -> ("sep_conv", 5)``, ``"conv_7x1_1x7" -> ("conv2", 7)`` (two factorised
    convolutions), ``"msa" -> ("msa", 0)``.
    """
    parts, sizes = [], []
    for token in name.split("_"):
        dims = token.split("x")
        if len(dims) == 2 and all(d.isdigit() for d in dims):
            sizes.append(max(int(d) for d in dims))
        else:
            parts.append(token)
    kind = "_".join(parts) + ("2" if len(sizes) > 1 else "")
    return kind, max(sizes, default=0)


#: The normal and reduction cells found by DARTS (second order) on CIFAR-10.
DARTS = Genotype(
    normal=(
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
    name="DARTS",
)  # fmt: skip

#: A vision transformer in this space: each cell is one self-attention block on state 1.
VIT = Genotype(
    normal=(("none", 0), ("msa", 1)),
    normal_concat=(2,),
    reduce=(("none", 0), ("avg_pool_3x3", 1)),
    reduce_concat=(2,),
    name="ViT",
)


def sample_cell(rng: np.random.Generator, steps: int, operations: tuple[str, ...]) -> tuple[Edge, ...]:
    """One random cell: each node takes two distinct earlier states, each through a random operation.

    Both the inputs and the operations are uniform, which is what arg-maxing DARTS's random
    near-uniform architecture weights amounts to.
    """
    edges: list[Edge] = []
    for k in range(steps):
        inputs = rng.choice(k + 2, size=2, replace=False)
        for j in inputs:
            edges.append((str(operations[rng.integers(len(operations))]), int(j)))
    return tuple(edges)


def sample_genotype(
    rng: np.random.Generator,
    steps: int,
    only_pool: bool = False,
    allow_none: bool = True,
    drop_concat: bool = True,
    allow_msa: bool = True,
) -> Genotype:
    """A random genotype of the DeepNets-1M space (appendix A.1 of the paper).

    Args:
        rng: the random generator (all randomness comes from it).
        steps: intermediate nodes per cell.
        only_pool: the reduction cell uses only parameter-free operations (like DARTS's).
        allow_none: allow the zero operation (sparse cells).
        drop_concat: randomly leave some intermediate nodes out of the output concatenation
            (the last node is always kept).
        allow_msa: allow multi-head self-attention.
    """
    ops = tuple(op for op in OPERATIONS if (allow_none or op != "none") and (allow_msa or op != "msa"))
    reduce_ops = tuple(op for op in ops if op in PARAMETER_FREE) if only_pool else ops
    normal = sample_cell(rng, steps, ops)
    reduce = sample_cell(rng, steps, reduce_ops)
    if drop_concat:
        concat = tuple(i for i in range(2, steps + 2) if i == steps + 1 or rng.random() > 0.5)
    else:
        concat = tuple(range(2, steps + 2))
    return Genotype(normal, concat, reduce, concat)
