"""GPU checks of ``initialize`` on CUDA models: devices, agreement with a CPU run, finiteness.

For ResNet-50, ViT-B/16 and ConvNeXt-T (torchvision, random weights) on ``cuda``, with a GHN-2
checkpoint on the GPU (with and without ``postprocess="orth"``) and ResNet-50 with a GHN-3: the
parameters stay on the GPU, the share predicted equals a CPU run's, every tensor and a forward pass
are finite, and the largest difference from the CPU run's tensors. Then a meta-device ResNet-18
with ``device="cuda"`` and a Faster R-CNN (MobileNet-V3) on the GPU (example-input path). One JSON
line per check on stdout. Needs a CUDA device.

    python benchmarks/gpu_check.py GHN2_FILE GHN3_FILE
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("ghn2", help="an ImageNet GHN-2 (name, folder or file)")
parser.add_argument("ghn3", help="an ImageNet GHN-3 (name, folder or file)")
args = parser.parse_args()
warnings.simplefilter("ignore")
ghn2_path, ghn3_path = args.ghn2, args.ghn3
dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
results = []


def build(name, seed=0):
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)()


def check(name, ghn_path, post=None):
    ghn_cpu = ghninit.load_ghn(ghn_path)
    ghn_gpu = ghninit.load_ghn(ghn_path).to(dev)
    cpu_model = build(name)
    rc = ghninit.initialize(cpu_model, ghn=ghn_cpu, postprocess=post)
    gpu_model = build(name).to(dev)
    ghninit.initialize(gpu_model, ghn=ghn_gpu, postprocess=post)  # warm-up
    gpu_model = build(name).to(dev)
    torch.cuda.synchronize()
    t = time.perf_counter()
    rg = ghninit.initialize(gpu_model, ghn=ghn_gpu, postprocess=post)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    on_gpu = all(p.device.type == "cuda" for p in gpu_model.parameters())
    cpu_sd = cpu_model.state_dict()
    diff = max(
        (v.float().cpu() - cpu_sd[k].float()).abs().max().item()
        for k, v in gpu_model.state_dict().items()
        if v.is_floating_point()
    )
    finite = all(torch.isfinite(p).all().item() for p in gpu_model.parameters())
    gpu_model.eval()
    with torch.no_grad():
        out = gpu_model(torch.randn(2, 3, 224, 224, device=dev))
    row = dict(
        model=name,
        ghn=ghn_path.split("/")[-1],
        postprocess=post,
        seconds_gpu=round(dt, 4),
        stages=rg.seconds,
        predicted=rg.fraction_predicted,
        same_as_cpu=rc.fraction_predicted == rg.fraction_predicted,
        params_on_gpu=on_gpu,
        max_abs_diff_vs_cpu=diff,
        finite=finite,
        forward_finite=bool(torch.isfinite(out).all()),
    )
    print(json.dumps(row), flush=True)
    results.append(row)


for name in ("resnet50", "vit_b_16", "convnext_tiny"):
    check(name, ghn2_path)
    check(name, ghn2_path, "orth")
check("resnet50", ghn3_path)
# meta-device model materialised on cuda
with torch.device("meta"):
    m = torchvision.models.resnet18()
r = ghninit.initialize(m, ghn=ghninit.load_ghn(ghn2_path), device="cuda")
print("meta->cuda", r.fraction_predicted, {p.device.type for p in m.parameters()}, flush=True)
# example-input path on cuda (detector)
det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).to(dev)
r = ghninit.initialize(det, ghn=ghninit.load_ghn(ghn2_path).to(dev))
print(
    "fasterrcnn_mobilenet cuda",
    r.tracing,
    round(r.fraction_predicted, 3),
    {p.device.type for p in det.parameters()},
    flush=True,
)
