/**
 * Packing of parameter trees into flat buffers, so a step passes one tensor per parameter group (and one per
 * optimizer moment) instead of hundreds.
 *
 * @module
 */
import { concat, reshape, sliceAxis } from "./ops.ts";
import { fail, type Tensor } from "./tensor.ts";

/** Where each parameter lives in a flat buffer. Order is the order of `shapes` given to `layoutOf`. */
export interface Layout {
  /** One per parameter: its name, its shape, and where it starts and how many elements it spans in the buffer. */
  entries: { path: string; shape: number[]; offset: number; size: number }[];
  /** Length of the flat buffer in elements. */
  total: number;
}

/** The layout of named parameters, in the given order. */
export function layoutOf(shapes: Record<string, readonly number[]>): Layout {
  let offset = 0;
  const entries = Object.entries(shapes).map(([path, shape]) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const e = { path, shape: [...shape], offset, size };
    offset += size;
    return e;
  });
  return { entries, total: offset };
}

/** Views of a flat traced buffer as named tensors (slices and reshapes; their gradients are pads, fused away). */
export function unpack(flat: Tensor, layout: Layout): Record<string, Tensor> {
  if (flat.ndim !== 1 || flat.shape[0] !== layout.total) fail("unpack", `expects [${layout.total}], got ${flat}`);
  const out: Record<string, Tensor> = {};
  for (const e of layout.entries) out[e.path] = reshape(sliceAxis(flat, 0, e.offset, e.offset + e.size), e.shape);
  return out;
}

/** Concatenates named traced tensors into one flat buffer in layout order. */
export function pack(tensors: Record<string, Tensor>, layout: Layout): Tensor {
  const parts = layout.entries.map((e) => {
    const t = tensors[e.path];
    if (!t) fail("pack", `missing tensor "${e.path}"`);
    if (t.size !== e.size) fail("pack", `"${e.path}" is ${t}, expected [${e.shape}]`);
    return reshape(t, [e.size]);
  });
  return concat(parts, 0);
}

/** Host side: concatenates named arrays into one Float32Array in layout order. */
export function packHost(arrays: Record<string, ArrayLike<number>>, layout: Layout): Float32Array {
  const out = new Float32Array(layout.total);
  for (const e of layout.entries) {
    const a = arrays[e.path];
    if (!a) throw new Error(`packHost: missing "${e.path}"`);
    if (a.length !== e.size) throw new Error(`packHost: "${e.path}" has ${a.length} values, expected ${e.size}`);
    out.set(a, e.offset);
  }
  return out;
}

/** Host side: splits a flat array into named copies. */
export function unpackHost(flat: ArrayLike<number>, layout: Layout): Record<string, Float32Array> {
  if (flat.length !== layout.total) throw new Error(`unpackHost: ${flat.length} values, expected ${layout.total}`);
  const out: Record<string, Float32Array> = {};
  const src = flat instanceof Float32Array ? flat : Float32Array.from(flat);
  for (const e of layout.entries) out[e.path] = src.slice(e.offset, e.offset + e.size);
  return out;
}

/** Nests dotted paths ("down.0.conv.w") into objects, so model code can write `p.down[0].conv.w`. */
export function nest<T>(flat: Record<string, T>): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const [path, v] of Object.entries(flat)) {
    const keys = path.split(".");
    let o = root;
    for (const k of keys.slice(0, -1)) o = (o[k] ??= {}) as Record<string, unknown>;
    o[keys[keys.length - 1]] = v;
  }
  return root;
}
