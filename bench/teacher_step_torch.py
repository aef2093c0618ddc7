"""The PyTorch (CPU) peer of bench/teacher_step.ts: the teacher UNet of models/unet.ts written with torch's own
modules' functional forms, the same weights, batch, MSE loss and AdamW, timed the same way.

Usage: teacher_step_torch.py DIR STEPS WARMUP [THREADS]; DIR holds spec.json (the UNet settings and the packed
layout), params.bin and the batch's .bin files (float32, little-endian). Prints one JSON line:
{"ms": median, "losses": [...], "torch": version, "threads": n, "device": name}. On the CPU unless ADD_TORCH_DEVICE
names another device (bench/gpu/ sets `cuda`); `loss.item()` in each step waits for the device.
"""
import json, math, os, sys, time
import torch
import torch.nn.functional as F


def load(d, name, shape):
    return torch.frombuffer(bytearray(open(f"{d}/{name}.bin", "rb").read()), dtype=torch.float32).reshape(shape)


def plan(u):
    """The block list of models/unet.ts's plan(): down blocks, downsamples, up blocks with their skip widths."""
    down, up, skips, c = [], [], [u["channels"][0]], u["channels"][0]
    n = len(u["channels"])
    for level, co in enumerate(u["channels"]):
        for b in range(u["blocks"]):
            down.append((f"down{level}.res{b}", f"down{level}.attn{b}" if level in u["attention_levels"] else None))
            c = co
            skips.append(c)
        if level + 1 < n:
            skips.append(c)
    for level in reversed(range(n)):
        for b in range(u["blocks"] + 1):
            skips.pop()
            up.append((f"up{level}.res{b}", f"up{level}.attn{b}" if level in u["attention_levels"] else None, level))
    return down, up


def forward(u, p, x, t, tokens, pooled):
    g, heads = u["groups"], u["heads"]

    def res(at, h, temb):
        y = F.conv2d(F.silu(F.group_norm(h, g, p[f"{at}.norm1.w"], p[f"{at}.norm1.b"], 1e-5)),
                     p[f"{at}.conv1.w"], p[f"{at}.conv1.b"], padding=1)
        y = y + F.linear(F.silu(temb), p[f"{at}.temb.w"], p[f"{at}.temb.b"])[:, :, None, None]
        y = F.conv2d(F.silu(F.group_norm(y, g, p[f"{at}.norm2.w"], p[f"{at}.norm2.b"], 1e-5)),
                     p[f"{at}.conv2.w"], p[f"{at}.conv2.b"], padding=1)
        skip = F.conv2d(h, p[f"{at}.skip.w"], p[f"{at}.skip.b"]) if f"{at}.skip.w" in p else h
        return skip + y

    def mha(q, k, v):
        b, tq, d = q.shape
        dh = d // heads
        split = lambda z: z.reshape(b, z.shape[1], heads, dh).transpose(1, 2)
        s = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh)
        return (torch.softmax(s, -1) @ split(v)).transpose(1, 2).reshape(b, tq, d)

    def attn(at, h):
        b, c, hh, ww = h.shape
        tok = h.reshape(b, c, hh * ww).transpose(1, 2)
        n = F.group_norm(h, g, p[f"{at}.norm.w"], p[f"{at}.norm.b"], 1e-5).reshape(b, c, hh * ww).transpose(1, 2)
        tok = tok + F.linear(mha(F.linear(n, p[f"{at}.self.q"]), F.linear(n, p[f"{at}.self.k"]),
                                 F.linear(n, p[f"{at}.self.v"])), p[f"{at}.self.o"])
        if f"{at}.cross.q" in p:
            q = F.linear(F.layer_norm(tok, (c,), p[f"{at}.ln.w"], p[f"{at}.ln.b"], 1e-5), p[f"{at}.cross.q"])
            ca = mha(q, F.linear(tokens, p[f"{at}.cross.k"]), F.linear(tokens, p[f"{at}.cross.v"]))
            tok = tok + F.linear(ca, p[f"{at}.cross.o"])
        return tok.transpose(1, 2).reshape(b, c, hh, ww)

    half = u["channels"][0] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    arg = t[:, None] * freqs[None]
    temb = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
    temb = F.linear(F.silu(F.linear(temb, p["time.l1.w"], p["time.l1.b"])), p["time.l2.w"], p["time.l2.b"])
    if "time.text.w" in p:
        temb = temb + F.linear(pooled, p["time.text.w"])
    down, up = plan(u)
    h = F.conv2d(x, p["conv_in.w"], p["conv_in.b"], padding=1)
    skips, di, n = [h], 0, len(u["channels"])
    for level in range(n):
        for _ in range(u["blocks"]):
            r, a = down[di]
            di += 1
            h = res(r, h, temb)
            if a:
                h = attn(a, h)
            skips.append(h)
        if level + 1 < n:
            at = f"down{level}.downsample"
            h = F.conv2d(h, p[f"{at}.w"], p[f"{at}.b"], stride=2, padding=1)
            skips.append(h)
    h = attn("mid.attn", res("mid.res0", h, temb))
    h = res("mid.res1", h, temb)
    ui = 0
    for level in reversed(range(n)):
        for _ in range(u["blocks"] + 1):
            r, a, _lv = up[ui]
            ui += 1
            h = res(r, torch.cat([h, skips.pop()], 1), temb)
            if a:
                h = attn(a, h)
        if level > 0:
            at = f"up{level}.upsample"
            h = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), p[f"{at}.w"], p[f"{at}.b"], padding=1)
    h = F.silu(F.group_norm(h, g, p["out.norm.w"], p["out.norm.b"], 1e-5))
    return F.conv2d(h, p["out.conv.w"], p["out.conv.b"], padding=1)


def main():
    d, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    spec = json.load(open(f"{d}/spec.json"))
    u, bsz, ntok = spec["net"], spec["batch"], spec["tokens"]
    dev = torch.device(os.environ.get("ADD_TORCH_DEVICE", "cpu"))
    # fp32 as the engine computes it: TF32 convolutions (cuDNN's default) would be a different, lower precision.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    flat = load(d, "params", [-1]).to(dev)
    p = {}
    for e in spec["layout"]:
        n = math.prod(e["shape"])
        p[e["path"]] = flat[e["offset"]:e["offset"] + n].reshape(e["shape"]).clone().requires_grad_(True)
    c, s = u["in_channels"], u["size"]
    x, target = load(d, "x", [bsz, c, s, s]).to(dev), load(d, "target", [bsz, c, s, s]).to(dev)
    t = load(d, "t", [bsz]).to(dev)
    tokens = load(d, "tokens", [bsz, ntok, u["context_dim"]]).to(dev)
    pooled = load(d, "pooled", [bsz, u["pooled_dim"]]).to(dev)
    opt = torch.optim.AdamW(list(p.values()), lr=spec["lr"], weight_decay=spec["weight_decay"], eps=1e-8)

    def step():
        loss = F.mse_loss(forward(u, p, x, t, tokens, pooled), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses = [step() for _ in range(warmup)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"ms": times[len(times) // 2], "losses": losses, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "device": str(dev)}))


if __name__ == "__main__":
    main()
