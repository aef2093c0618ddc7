"""The PyTorch peer of bench/sd15.ts: the real diffusers v0.31.0 UNet2DConditionModel (from .cache/diffusers_ref, put
on PYTHONPATH by the caller) built from SD 1.5's config.json with diffusers' own random initialisation, on the CPU
with two threads: forward, and forward + loss.backward() over every weight, timed as bench/sd15.ts times its own.

Usage: sd15_torch.py CONFIG_JSON RUNS WARMUP [SIDE]; prints one JSON line {"fwd_ms", "fwd_bwd_ms", "fwd_peak_gb",
"peak_gb", "params", "torch", "threads"}. Peak memory is ru_maxrss (the process's high-water RSS), read after the
forward runs and again after the backward runs: it includes the 3.4 GB of fp32 weights.
"""
import importlib.machinery
import json
import resource
import sys
import time
import types

import torch
import torch.nn.functional as F


def _stub_safetensors():
    # diffusers imports safetensors at import time; the package is not installed here and no file is read, so an
    # empty module of that name is enough (tests/fixtures/diffusers/make_fixtures.py carries a real reader).
    m, mt = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
    m.__spec__ = importlib.machinery.ModuleSpec("safetensors", None)
    mt.__spec__ = importlib.machinery.ModuleSpec("safetensors.torch", None)
    m.torch, m.safe_open, m.SafetensorError = mt, None, OSError
    mt.load_file = mt.save_file = None
    sys.modules["safetensors"], sys.modules["safetensors.torch"] = m, mt


_stub_safetensors()
from diffusers import UNet2DConditionModel  # noqa: E402


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


def main():
    cfg = json.load(open(sys.argv[1]))
    runs, warmup = int(sys.argv[2]), int(sys.argv[3])
    side = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    sample = torch.randn(1, cfg["in_channels"], side, side)
    t = torch.tensor([999.0])
    ctx = torch.randn(1, 77, cfg["cross_attention_dim"])
    target = torch.randn(1, cfg["out_channels"], side, side)

    def fwd():
        with torch.no_grad():
            unet(sample, t, encoder_hidden_states=ctx).sample

    def fwd_bwd():
        unet.zero_grad(set_to_none=True)
        F.mse_loss(unet(sample, t, encoder_hidden_states=ctx).sample, target).backward()

    fwd_ms = median_ms(fwd, runs, warmup)
    fwd_peak = peak_gb()
    fwd_bwd_ms = median_ms(fwd_bwd, runs, warmup)
    print(json.dumps({
        "ms": fwd_bwd_ms, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "fwd_peak_gb": fwd_peak, "peak_gb": peak_gb(),
        "params": sum(p.numel() for p in unet.parameters()), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
