"""Initialise every torchvision classification model and a list of popular timm models.

Writes a markdown table (model, graph nodes, % of parameters predicted, seconds) and a JSON file.
A model that fails is listed with its error, and the script exits non-zero at the end.

    python benchmarks/coverage.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors

``--all-timm`` goes through every architecture of ``timm.list_models()`` instead: each is built on
the meta device (no memory, no initialisation, so giants cost nothing), turned into a graph and
predicted without writing (the predictions are checked as ``initialize`` checks them). It writes
``benchmarks/coverage_timm.md``: failures grouped by cause, the share of parameters predicted,
and for every architecture under 90% what its unpredicted parameters are. ``--limit N`` takes an
evenly spaced sample of N architectures (a quick run); the full run is long (about an hour here).

    python benchmarks/coverage.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors --all-timm

``--families detection,segmentation,optical-flow,transformers`` goes through every torchvision
detection, segmentation and optical-flow model and a list of Hugging Face ``transformers`` vision
models built from their default configs (random weights, nothing downloaded): share of parameters
predicted, how the graph was traced (symbolic or with an example input), the largest unpredicted
causes, and whether a forward pass on the inferred example input is finite after ``initialize``.
It writes ``benchmarks/coverage_families.md`` and ``.json``.

    python benchmarks/coverage.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors \
        --families detection,segmentation,optical-flow,transformers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

REPO_DIR = Path(__file__).resolve().parents[1]


def _portable(ghn: str) -> str:
    """``--ghn`` as written in the report: a path relative to the repository root (never machine-specific)."""
    path = Path(ghn)
    return Path(os.path.relpath(path.resolve(), REPO_DIR)).as_posix() if path.exists() else ghn


TIMM_MODELS = [
    "resnet18", "resnet50", "resnet101", "resnext50_32x4d", "seresnext50_32x4d", "wide_resnet50_2",
    "resnetv2_50", "efficientnet_b0", "efficientnet_b3", "tf_efficientnetv2_s", "mobilenetv3_large_100",
    "mobilenetv2_100", "mnasnet_100", "convnext_tiny", "convnext_small", "convnextv2_tiny", "vit_tiny_patch16_224",
    "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "regnetx_002", "regnety_016", "densenet121", "densenet169",
    "inception_v3", "xception41", "dla34", "dpn68", "ghostnet_100", "rexnet_100", "mixnet_s", "efficientformer_l1",
    "poolformer_s12", "levit_128", "cspresnet50", "hrnet_w18_small", "vgg16", "repvgg_a2", "res2net50_26w_4s",
    "mobilevit_s", "edgenext_small", "coat_lite_tiny", "maxvit_tiny_tf_224",
]  # fmt: skip


def measure(name: str, build, ghn: ghninit.GHN2) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(name)
        start = time.perf_counter()
        report = ghninit.initialize(model, ghn=ghn)
        seconds = time.perf_counter() - start
        return {
            "model": name,
            "nodes": report.n_nodes,
            "percent_predicted": 100 * report.fraction_predicted,
            "seconds": seconds,
            "error": None,
        }
    except Exception as err:  # the table reports failures instead of stopping
        return {"model": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def _cause(model: torch.nn.Module, name: str, reason: str) -> str:
    """Why a parameter was not predicted, with the type of the module that owns it."""
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    kind = type(owner).__name__
    return reason if kind in reason else f"{reason} [{kind}.{name.rpartition('.')[2]}]"


def measure_meta(name: str, ghn: ghninit.GHN2) -> dict:
    """Build a timm model on the meta device, graph it and predict without writing; never raises."""
    import timm

    from ghninit.write.assign import inflate_blocks, prepare

    row: dict = {"model": name, "error": None}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception as err:  # the table reports failures instead of stopping
        row.update(error=f"build: {type(err).__name__}: {_first_line(err)}", seconds=time.perf_counter() - start)
        return row
    try:
        graph = ghninit.build_graph(model, virtual_edge_cutoff=50 if ghn.ve else 1)
        with torch.no_grad():  # the classifier too, whatever its classes: initialize(keep_classifier=False)
            blocks = {k: b for k, (b, _) in ghn.predict_blocks(graph, True).items()}
        blocks, _ = inflate_blocks(model, blocks)  # 3-D kernels, as initialize does
        ready = prepare(model, blocks, torch.device("cpu"))
    except Exception as err:
        row.update(error=f"{type(err).__name__}: {_first_line(err)}", seconds=time.perf_counter() - start)
        return row
    tensors = dict(model.named_parameters(remove_duplicate=False))
    predicted = {id(tensors[k]) for k in ready}
    causes: dict[str, int] = {}
    for pname, p in model.named_parameters():
        if id(p) not in predicted:
            reason = graph.uncovered.get(pname, "not predicted by this GHN (classifier or tensor rank)")
            cause = _cause(model, pname, reason)
            causes[cause] = causes.get(cause, 0) + p.numel()
    total = sum(p.numel() for p in model.parameters())
    row.update(
        nodes=len(graph),
        tracing=graph.tracing,
        params=total,
        percent_predicted=100 * sum(tensors[k].numel() for k in ready) / max(total, 1),
        causes=dict(sorted(causes.items(), key=lambda kv: -kv[1])[:3]),
        seconds=time.perf_counter() - start,
    )
    return row


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else "")[:240]


def all_timm_report(rows: list[dict], command: str) -> str:
    """Markdown: totals, failures grouped by cause, and every architecture under 90% with its causes."""
    import re

    import timm

    ok = [r for r in rows if r["error"] is None]
    failed = [r for r in rows if r["error"]]
    under90 = sorted((r for r in ok if r["percent_predicted"] < 90), key=lambda r: r["percent_predicted"])
    under50 = [r for r in under90 if r["percent_predicted"] < 50]
    mean = sum(r["percent_predicted"] for r in ok) / max(len(ok), 1)
    lines = [
        "# Coverage of every timm architecture",
        "",
        f"Made by `{command}` (timm {timm.__version__}, torch {torch.__version__}): each architecture built on "
        "the meta device, graphed and predicted without writing (the predictions checked as `initialize` checks "
        "them), the classifier included whatever its number of classes (as with `keep_classifier=False`). "
        "Parameters shared by several names count once.",
        "",
        f"- architectures: {len(rows)}; through: {len(ok)}; failed: {len(failed)}",
        f"- traced with an example input (symbolic fx tracing failed): "
        f"{', '.join(r['model'] for r in ok if r.get('tracing', 'symbolic') != 'symbolic') or 'none'}",
        f"- mean share of parameters predicted: {mean:.1f}%; under 90%: {len(under90)}; under 50%: {len(under50)}",
        "",
        "## Failures by cause",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for r in failed:
        key = re.sub(r"'[^']*'", "'...'", r["error"])[:160]  # module paths and names differ per model
        groups.setdefault(key, []).append(r["model"])
    if not groups:
        lines.append("None.")
    for key, models in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {len(models)}: `{key}` ({', '.join(models[:8])}{' ...' if len(models) > 8 else ''})")
    lines += [
        "",
        "## Architectures with under 90% of their parameters predicted",
        "",
        "| model | params (M) | % predicted | largest unpredicted causes (% of the model's parameters) |",
        "|---|---:|---:|---|",
    ]
    for r in under90:
        causes = "; ".join(f"{c} ({100 * n / r['params']:.1f})" for c, n in r["causes"].items())
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} | {r['percent_predicted']:.1f} | {causes} |")
    return "\n".join(lines) + "\n"


_WORKER_GHN: dict = {}


def _measure_in_worker(ghn_source: str, name: str) -> dict:
    """:func:`measure_meta` in a pool process, which loads the GHN once."""
    if ghn_source not in _WORKER_GHN:
        torch.set_num_threads(1)
        _WORKER_GHN[ghn_source] = ghninit.load_ghn(ghn_source)
    return measure_meta(name, _WORKER_GHN[ghn_source])


def run_all_timm(
    ghn: ghninit.GHN2, limit: int | None, out: Path, command: str, workers: int = 1, ghn_source: str | None = None
) -> int:
    """Every (or ``limit`` evenly spaced) timm architecture through :func:`measure_meta`; ``workers`` > 1
    measures in that many processes (each loads ``ghn_source``), rows kept in ``timm.list_models()`` order."""
    import timm

    names = timm.list_models()
    if limit:
        step = max(len(names) / limit, 1)
        names = [names[int(i * step)] for i in range(min(limit, len(names)))]
    partial = out.with_suffix(".json")
    done = {r["model"]: r for r in json.loads(partial.read_text())} if partial.is_file() else {}
    if done:
        print(f"resuming: {len(done)} architectures already measured in {partial}", file=sys.stderr)

    def save() -> None:  # partial results survive a kill; a rerun resumes
        partial.write_text(json.dumps([done[n] for n in names if n in done], indent=1))

    todo = [n for n in names if n not in done]
    if workers > 1 and todo:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_measure_in_worker, ghn_source, n): n for n in todo}
            for future in tqdm(as_completed(futures), total=len(todo), desc=f"timm (meta, {workers} processes)"):
                done[futures[future]] = future.result()
                save()
    else:
        for name in tqdm(todo, desc="timm (meta)"):
            done[name] = measure_meta(name, ghn)
            save()
    rows = [done[n] for n in names]
    text = all_timm_report(rows, command)
    out.write_text(text)
    print(text)
    return 1 if any(r["error"] for r in rows) else 0


FAMILIES = ("detection", "segmentation", "optical-flow", "transformers")
# Hugging Face vision models built from their default configs; config fields changed so that nothing is downloaded.
HF_MODELS: dict[str, dict] = {
    "ViTForImageClassification": {}, "DeiTForImageClassification": {}, "BeitForImageClassification": {},
    "Data2VecVisionForImageClassification": {}, "Dinov2ForImageClassification": {},
    "Dinov2WithRegistersForImageClassification": {}, "IJepaForImageClassification": {},
    "ViTMSNForImageClassification": {}, "SwinForImageClassification": {}, "Swinv2ForImageClassification": {},
    "ConvNextForImageClassification": {}, "ConvNextV2ForImageClassification": {}, "ResNetForImageClassification": {},
    "RegNetForImageClassification": {}, "BitForImageClassification": {}, "EfficientNetForImageClassification": {},
    "MobileNetV1ForImageClassification": {}, "MobileNetV2ForImageClassification": {},
    "MobileViTForImageClassification": {}, "MobileViTV2ForImageClassification": {}, "PoolFormerForImageClassification": {},
    "CvtForImageClassification": {}, "LevitForImageClassification": {}, "PvtForImageClassification": {},
    "PvtV2ForImageClassification": {}, "FocalNetForImageClassification": {}, "HieraForImageClassification": {},
    "SwiftFormerForImageClassification": {}, "SegformerForImageClassification": {},
    "SiglipForImageClassification": {}, "CLIPForImageClassification": {}, "HGNetV2ForImageClassification": {},
    "TextNetForImageClassification": {},
    "SegformerForSemanticSegmentation": {}, "MobileViTForSemanticSegmentation": {},
    "MobileNetV2ForSemanticSegmentation": {}, "BeitForSemanticSegmentation": {"out_indices": [3, 5, 7, 11]}, "UperNetForSemanticSegmentation": {},
    "DPTForDepthEstimation": {}, "GLPNForDepthEstimation": {}, "DepthAnythingForDepthEstimation": {},
    "YolosForObjectDetection": {},
    "DetrForObjectDetection": {"use_timm_backbone": False, "use_pretrained_backbone": False},
    "ConditionalDetrForObjectDetection": {"use_timm_backbone": False, "use_pretrained_backbone": False},
    "TableTransformerForObjectDetection": {"use_timm_backbone": False, "use_pretrained_backbone": False},
}  # fmt: skip


def _family_models(family: str) -> list[tuple[str, object]]:
    """``(name, build)`` for each model of a family; ``build()`` returns the model with random weights."""
    if family == "transformers":
        import transformers

        def hf(name: str, overrides: dict):
            cls = getattr(transformers, name)
            return lambda: cls(cls.config_class(**overrides))

        return [(name, hf(name, o)) for name, o in HF_MODELS.items() if hasattr(transformers, name)]
    module = {
        "detection": torchvision.models.detection,
        "segmentation": torchvision.models.segmentation,
        "optical-flow": torchvision.models.optical_flow,
    }[family]
    kwargs = {"weights": None}
    if family != "optical-flow":
        kwargs["weights_backbone"] = None
    return [
        (name, lambda name=name: torchvision.models.get_model(name, **kwargs))
        for name in torchvision.models.list_models(module=module)
    ]


def _finite(out) -> bool:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out if not hasattr(out, "to_tuple") else out.to_tuple())
    tensors = [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(tensors) and all(bool(torch.isfinite(t).all()) for t in tensors)


def measure_family(family: str, name: str, build, ghn) -> dict:
    """Initialise one model of a family and run it once; never raises."""
    from ghninit.graph.example_inputs import infer_example_inputs, small_detection_inputs

    row: dict = {"family": family, "model": name, "error": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = build()
    except Exception as err:  # the table reports failures instead of stopping
        row["error"] = f"build: {type(err).__name__}: {_first_line(err)}"
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = ghninit.initialize(model, ghn=ghn)
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {_first_line(err)}"
        return row
    causes: dict[str, int] = {}
    params = dict(model.named_parameters())
    for pname, why in report.skipped.items():
        if pname in params:
            cause = _cause(model, pname, why)
            causes[cause] = causes.get(cause, 0) + params[pname].numel()
    row.update(
        params=report.n_params_total,
        percent_predicted=100 * report.fraction_predicted,
        tracing=report.tracing,
        nodes=report.n_nodes,
        seconds=report.seconds["total"],
        graph_seconds=report.seconds["graph"],
        causes=dict(sorted(causes.items(), key=lambda kv: -kv[1])[:3]),
    )
    try:
        model.eval()
        with torch.no_grad(), small_detection_inputs(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = infer_example_inputs(model)
            out = model(**example) if isinstance(example, dict) else model(*example)
        row["finite_forward"] = _finite(out)
    except Exception as err:
        row["finite_forward"] = False
        row["forward_error"] = f"{type(err).__name__}: {_first_line(err)}"
    return row


def families_report(rows: list[dict], command: str) -> str:
    """Markdown: a summary per family and one row per model."""
    import transformers

    lines = [
        "# Coverage of detection, segmentation, optical-flow and Hugging Face vision models",
        "",
        f"Made by `{command}` (torch {torch.__version__}, torchvision {torchvision.__version__}, transformers "
        f"{transformers.__version__}): each model built with random weights (Hugging Face models from their "
        "default config), initialised with `ghninit.initialize(model, ghn=...)` (classifier kept unless its "
        "class count matches the GHN's), then run once in eval mode on the inferred example input. "
        "Seconds: the whole `initialize` call on a loaded, shared 2-core machine (preliminary).",
        "",
        "| family | models | initialised | >= 50% predicted | finite forward | traced with an example input |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        fr = [r for r in rows if r["family"] == family]
        ok = [r for r in fr if r["error"] is None]
        lines.append(
            f"| {family} | {len(fr)} | {len(ok)} | {sum(r['percent_predicted'] >= 50 for r in ok)} | "
            f"{sum(bool(r.get('finite_forward')) for r in ok)} | {sum(r['tracing'] != 'symbolic' for r in ok)} |"
        )
    lines += [
        "",
        "| family | model | params (M) | % predicted | tracing | finite forward | seconds | largest unpredicted causes "
        "(% of parameters) |",
        "|---|---|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['family']} | {r['model']} | - | FAILED | - | - | - | {r['error']} |")
            continue
        causes = "; ".join(f"{c} ({100 * n / r['params']:.1f})" for c, n in r["causes"].items())
        forward = "yes" if r.get("finite_forward") else f"no {r.get('forward_error', '')}".strip()
        lines.append(
            f"| {r['family']} | {r['model']} | {r['params'] / 1e6:.1f} | {r['percent_predicted']:.1f} | "
            f"{r['tracing']} | {forward} | {r['seconds']:.1f} | {causes} |"
        )
    return "\n".join(lines) + "\n"


def run_families(families: list[str], ghn, models: list[str] | None, out: Path, command: str) -> int:
    rows = []
    for family in families:
        for name, build in tqdm(_family_models(family), desc=family):
            if models and name not in models:
                continue
            rows.append(measure_family(family, name, build, ghn))
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1))  # partial results survive a kill
    text = families_report(rows, command)
    out.write_text(text)
    print(text)
    return 1 if any(r["error"] for r in rows) else 0


def table(rows: list[dict]) -> str:
    lines = ["| model | nodes | % params predicted | seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['model']} | - | FAILED: {r['error']} | - |")
        else:
            lines.append(f"| {r['model']} | {r['nodes']} | {r['percent_predicted']:.2f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN: name, Hub repo, folder or file")
    parser.add_argument("--source", choices=["torchvision", "timm", "all"], default="all")
    parser.add_argument("--models", nargs="*", help="only these model names")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/coverage.md"), help="markdown output")
    parser.add_argument("--all-timm", action="store_true", help="every timm.list_models() architecture, on meta")
    parser.add_argument("--limit", type=int, help="with --all-timm: an evenly spaced sample of this many")
    parser.add_argument(
        "--workers", type=int, default=1, help="with --all-timm: processes measuring at once (default: 1)"
    )
    parser.add_argument("--families", help=f"comma-separated, of {','.join(FAMILIES)}")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ghn = ghninit.load_ghn(args.ghn)
    if args.families:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            parser.error(f"unknown families {unknown}; choose from {FAMILIES}")
        out = args.out if args.out != Path("benchmarks/coverage.md") else Path("benchmarks/coverage_families.md")
        command = "python benchmarks/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        return run_families(families, ghn, args.models, out, command)
    if args.all_timm:
        out = args.out if args.out != Path("benchmarks/coverage.md") else Path("benchmarks/coverage_timm.md")
        command = "python benchmarks/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        return run_all_timm(ghn, args.limit, out, command, args.workers, args.ghn)
    sections = []
    if args.source in ("torchvision", "all"):
        names = args.models or torchvision.models.list_models(module=torchvision.models)
        rows = [measure(n, torchvision.models.get_model, ghn) for n in tqdm(names, desc="torchvision")]
        sections.append(("torchvision", rows))
    if args.source in ("timm", "all"):
        import timm

        names = args.models or TIMM_MODELS
        rows = [measure(n, lambda n: timm.create_model(n, pretrained=False), ghn) for n in tqdm(names, desc="timm")]
        sections.append((f"timm {timm.__version__}", rows))
    text = [
        "# Coverage: models initialised by ghninit",
        "",
        f"Made by `python benchmarks/coverage.py --ghn {_portable(args.ghn)}` (torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads). Seconds are one "
        "end-to-end `initialize` call without warm-up, on a shared 2-core machine; see predict_speed.md for timings.",
    ]
    failed = 0
    for title, rows in sections:
        ok = sum(r["error"] is None for r in rows)
        failed += len(rows) - ok
        text += ["", f"## {title}: {ok}/{len(rows)} initialised", "", table(rows)]
    args.out.write_text("\n".join(text) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(sections, indent=1))
    print("\n".join(text))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
