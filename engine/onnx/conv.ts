/**
 * Lowerings of the three conv primitives: the forward conv is one Conv, and each gradient has target-specific
 * patterns (a Conv with the flipped kernel or a ConvTranspose for the input gradient; Gemm, MatMul or Conv
 * formulations of the weight gradient), chosen by measurement.
 *
 * @module
 */
import type { NodeOf } from "../ir.ts";
import type { AttrDef } from "./proto.ts";
import { type Builder, type GradWeightLowering, inShape, type Lowering, type OnnxTarget } from "./builder.ts";

type ConvNode = NodeOf<"conv2d" | "conv2d_grad_input" | "conv2d_grad_weight">;

/**
 * Input gradient as a plain Conv: gy dilated by the stride (zeros between rows and columns), correlated with the
 * kernel flipped in space and with its in/out channels swapped within each group.
 */
function gradInputConv(
  b: Builder,
  n: ConvNode,
  gy: string,
  w: string,
  gs: number[],
  ws: number[],
  out: string,
): string {
  const [N, O, Ho, Wo] = gs;
  const [, Ig, kh, kw] = ws;
  const [, , H, W] = n.shape;
  const { stride: [sh, sw], pad, groups: G } = n.attrs;
  let d = gy, Lh = Ho, Lw = Wo;
  if (sh > 1 || sw > 1) {
    d = b.reshape(d, [N, O, Ho, 1, Wo, 1]);
    d = b.op("Pad", [d, b.i64([0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1])]);
    Lh = Ho * sh;
    Lw = Wo * sw;
    d = b.reshape(d, [N, O, Lh, Lw]);
  }
  // Output row i reads dilated rows i + pad_top − (kh − 1) … i + pad_top; pads outside the data become crops.
  let top = kh - 1 - pad[0], left = kw - 1 - pad[1];
  let bottom = H - Lh + pad[0], right = W - Lw + pad[1];
  const cs = [Math.max(0, -top), Math.max(0, -left)], ce = [Lh + Math.min(0, bottom), Lw + Math.min(0, right)];
  if (cs[0] > 0 || cs[1] > 0 || ce[0] < Lh || ce[1] < Lw) d = b.op("Slice", [d, b.i64(cs), b.i64(ce), b.i64([2, 3])]);
  [top, left, bottom, right] = [top, left, bottom, right].map((p) => Math.max(0, p));
  const flipped = b.op("Slice", [
    w,
    b.i64([kh - 1, kw - 1]),
    b.i64([-kh - 1, -kw - 1]),
    b.i64([2, 3]),
    b.i64([-1, -1]),
  ]);
  const wt = G === 1 ? b.transpose(flipped, [1, 0, 2, 3]) : b.reshape(
    b.transpose(b.reshape(flipped, [G, O / G, Ig, kh, kw]), [0, 2, 1, 3, 4]),
    [G * Ig, O / G, kh, kw],
  );
  return b.op("Conv", [d, wt], [
    { name: "kernel_shape", ints: [kh, kw] },
    { name: "pads", ints: [top, left, bottom, right] },
    { name: "group", i: G },
  ], out);
}

/** Conv attributes shared by the forward conv and the ConvTranspose of its input gradient. */
function convAttrs(n: ConvNode, kh: number, kw: number): AttrDef[] {
  const { stride, pad, groups } = n.attrs;
  return [
    { name: "kernel_shape", ints: [kh, kw] },
    { name: "strides", ints: stride },
    { name: "pads", ints: pad },
    { name: "group", i: groups },
  ];
}

/**
 * Weight gradient as one Conv over batch-transposed tensors: the batch becomes the channel axis being summed over,
 * and gy becomes the kernel, dilated by the forward stride.
 */
function gradWeightConv(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const { stride, pad, groups: g } = n.attrs;
  const [N, Cin, H, W] = xs;
  const [, , Ho, Wo] = gs;
  const [, cg, kh, kw] = n.shape;
  const xt = g === 1
    ? b.transpose(x, [1, 0, 2, 3])
    : b.reshape(b.transpose(b.reshape(x, [N, g, Cin / g, H, W]), [2, 1, 0, 3, 4]), [cg, g * N, H, W]);
  const gt = b.transpose(gy, [1, 0, 2, 3]);
  // End pads that make the output exactly kh x kw; when that would be negative, pad 0 and slice the rest off.
  const endH = kh + (Ho - 1) * stride[0] - H - pad[0];
  const endW = kw + (Wo - 1) * stride[1] - W - pad[1];
  let r = b.op("Conv", [xt, gt], [
    { name: "kernel_shape", ints: [Ho, Wo] },
    { name: "dilations", ints: stride },
    { name: "strides", ints: [1, 1] },
    { name: "pads", ints: [pad[0], pad[1], Math.max(0, endH), Math.max(0, endW)] },
    { name: "group", i: g },
  ]);
  if (endH < 0 || endW < 0) r = b.op("Slice", [r, b.i64([0, 0]), b.i64([kh, kw]), b.i64([2, 3])]);
  return b.transpose(r, [1, 0, 2, 3], out);
}

/**
 * The kh*kw strided windows of the zero-padded input that meet each kernel tap, in tap order, each [Cin, N*Ho*Wo]:
 * the shared first half of the MatMul and Gemm weight-gradient lowerings.
 */
function paddedWindows(b: Builder, n: ConvNode, x: string, xs: number[], gs: number[]): string[] {
  const { stride, pad } = n.attrs;
  const [N, Cin] = xs;
  const [, , Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  let xp = b.transpose(x, [1, 0, 2, 3]);
  if (pad.some((p) => p !== 0)) xp = b.op("Pad", [xp, b.i64([0, 0, pad[0], pad[1], 0, 0, pad[2], pad[3]])]);
  const windows: string[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const s = b.op("Slice", [
        xp,
        b.i64([i, j]),
        b.i64([i + (Ho - 1) * stride[0] + 1, j + (Wo - 1) * stride[1] + 1]),
        b.i64([2, 3]),
        b.i64(stride),
      ]);
      windows.push(b.reshape(s, [Cin, N * Ho * Wo]));
    }
  }
  return windows;
}

/**
 * Weight gradient (groups 1) as one batched MatMul over the kh*kw strided windows of the padded input:
 * [kh*kw, Cin, N*Ho*Wo] x [N*Ho*Wo, Cout]. The previous cpu default, kept as a measured alternative (it copies every
 * window once more, into the concatenation).
 */
function gradWeightMatMul(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const [N, Cin] = xs;
  const [, Cout, Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  const k = N * Ho * Wo;
  const windows = paddedWindows(b, n, x, xs, gs).map((w) => b.reshape(w, [1, Cin, k]));
  const cols = windows.length === 1 ? windows[0] : b.op("Concat", windows, [{ name: "axis", i: 0 }]);
  const gyt = b.reshape(b.transpose(gy, [0, 2, 3, 1]), [k, Cout]);
  const prod = b.op("MatMul", [cols, gyt]); // [kh*kw, Cin, Cout]
  return b.reshape(b.transpose(prod, [2, 1, 0]), [Cout, Cin, kh, kw], out);
}

/**
 * Weight gradient (groups 1) as one Gemm per kh*kw window of the padded input, gy [Cout, N*Ho*Wo] times the window
 * [Cin, N*Ho*Wo] transposed (Gemm's transB, no copy), each [Cout, Cin] result becoming one kernel tap. Unlike
 * `gradWeightMatMul` it never concatenates the windows (kh*kw copies of the input) nor transposes the product.
 */
function gradWeightGemm(
  b: Builder,
  n: ConvNode,
  x: string,
  gy: string,
  xs: number[],
  gs: number[],
  out: string,
): string {
  const [N, Cin] = xs;
  const [, Cout, Ho, Wo] = gs;
  const [, , kh, kw] = n.shape;
  const gyt = b.reshape(b.transpose(gy, [1, 0, 2, 3]), [Cout, N * Ho * Wo]);
  const taps = paddedWindows(b, n, x, xs, gs).map((w) =>
    b.reshape(b.op("Gemm", [gyt, w], [{ name: "transB", i: 1 }]), [Cout, Cin, 1]) // one [Cout, Cin] tap
  );
  if (taps.length === 1) return b.reshape(taps[0], [Cout, Cin, kh, kw], out);
  return b.reshape(b.op("Concat", taps, [{ name: "axis", i: 2 }]), [Cout, Cin, kh, kw], out);
}

/** The forward conv: ONNX Conv has the IR's semantics (NCHW, OIHW, [top, left, bottom, right] pads, groups). */
export const lowerConv2d: Lowering<"conv2d"> = (a) => {
  const ws = inShape(a, 1);
  return a.b.op("Conv", a.ins, convAttrs(a.n, ws[2], ws[3]), a.out);
};

/** The input gradient: a Conv with the flipped kernel on cpu and wasm, a ConvTranspose on webgpu. */
export const lowerConv2dGradInput: Lowering<"conv2d_grad_input"> = (a) => {
  const { b, n, ins, out } = a;
  const ws = inShape(a, 1);
  // onnxruntime's CPU ConvTranspose goes through col2im and is ~3× slower than a Conv with the flipped kernel.
  if (a.target !== "webgpu") return gradInputConv(b, n, ins[0], ins[1], inShape(a, 0), ws, out);
  const [, , H, W] = n.shape;
  const [, , Ho, Wo] = inShape(a, 0);
  const { stride, pad } = n.attrs;
  // The forward conv ignores the last (H + pads - kh) mod stride rows; output_padding restores them as zeros.
  const oph = H + pad[0] + pad[2] - ws[2] - (Ho - 1) * stride[0];
  const opw = W + pad[1] + pad[3] - ws[3] - (Wo - 1) * stride[1];
  const attrs = convAttrs(n, ws[2], ws[3]);
  if (oph !== 0 || opw !== 0) attrs.push({ name: "output_padding", ints: [oph, opw] });
  return b.op("ConvTranspose", ins, attrs, out);
};

/** The weight gradient, in the formulation `gradWeight` picks (grouped convs have only the Conv one). */
export const lowerConv2dGradWeight: Lowering<"conv2d_grad_weight"> = (a) => {
  const how = a.n.attrs.groups === 1 ? a.gradWeight : "conv";
  const f = how === "gemm" ? gradWeightGemm : how === "matmul" ? gradWeightMatMul : gradWeightConv;
  return f(a.b, a.n, a.ins[0], a.ins[1], inShape(a, 0), inShape(a, 1), a.out);
};

/** The weight-gradient lowering each target uses unless told otherwise (measured: `deno task bench`). */
export function defaultGradWeight(target: OnnxTarget): GradWeightLowering {
  return target === "webgpu" ? "conv" : "gemm";
}
