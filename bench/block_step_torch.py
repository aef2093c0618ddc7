"""The peer of bench/block.ts in PyTorch: the same block, loss and Adam step, timed the same way.

On the CPU unless ADD_TORCH_DEVICE names another device (bench/gpu/ sets `cuda`); the data are drawn on the CPU either
way, so every device starts from the same numbers, and `loss.item()` in each step waits for the device.
Prints one JSON line: {"ms": median, "torch": version, "threads": n, "device": name}. Run with Debian's python3-torch.
"""
import json, os, sys, time
import torch
import torch.nn.functional as F

def main():
    batch, c, size, steps, warmup = (int(a) for a in sys.argv[1:6])
    torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 2)
    torch.manual_seed(0)
    dev = torch.device(os.environ.get("ADD_TORCH_DEVICE", "cpu"))
    # fp32 as the engine computes it: TF32 convolutions (cuDNN's default) would be a different, lower precision.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    p = {
        "conv1.w": torch.randn(2 * c, c, 3, 3) * (1 / (9 * c)) ** 0.5, "conv1.b": torch.zeros(2 * c),
        "gn.w": torch.ones(2 * c), "gn.b": torch.zeros(2 * c),
        "conv2.w": torch.randn(c, 2 * c, 3, 3) * (1 / (18 * c)) ** 0.5, "conv2.b": torch.zeros(c),
        "wq": torch.randn(c, c) / c ** 0.5, "wk": torch.randn(c, c) / c ** 0.5,
        "wv": torch.randn(c, c) / c ** 0.5, "wo": torch.randn(c, c) / c ** 0.5,
    }
    p = {k: t.to(dev).requires_grad_(True) for k, t in p.items()}
    opt = torch.optim.Adam(list(p.values()), lr=1e-3)
    x = torch.randn(batch, c, size, size).to(dev)
    y = torch.randn(batch, c, size, size).to(dev)

    def step():
        h = F.conv2d(x, p["conv1.w"], p["conv1.b"], padding=1)
        h = F.silu(F.group_norm(h, 8, p["gn.w"], p["gn.b"]))
        h = F.conv2d(h, p["conv2.w"], p["conv2.b"], padding=1)
        h1 = x + h
        pooled = F.avg_pool2d(h1, 2)
        n, _, hh, ww = pooled.shape
        tok = pooled.reshape(n, c, hh * ww).transpose(1, 2)
        q, k, v = tok @ p["wq"].T, tok @ p["wk"].T, tok @ p["wv"].T
        a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, -1) @ v
        a = a @ p["wo"].T
        back = a.transpose(1, 2).reshape(n, c, hh, ww)
        out = h1 + F.interpolate(back, scale_factor=2, mode="nearest")
        loss = F.mse_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"ms": times[len(times) // 2], "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "device": str(dev)}))

main()
