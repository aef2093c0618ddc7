/**
 * Packing of parameter trees into flat buffers, so a step passes one tensor per parameter group (and one per
 * optimizer moment) instead of hundreds.
 *
 * An executor caps the size of one tensor (WebGPU binds it as one storage buffer, below 4 GiB on every adapter), so a
 * group larger than its cap is split, at parameter boundaries, into several flat buffers (`chunkLayout`): the
 * `*Chunks` functions are the same packing over such a list, and a group that fits is one buffer, as before.
 *
 * @module
 */
import { concat, reshape, sliceAxis } from "./ops.ts";
import { fail, type Tensor, type Trace } from "./tensor.ts";

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

/**
 * Splits `layout` at parameter boundaries into consecutive buffers of at most `limit` elements each (greedily, in
 * order; each buffer's entries are offset from its own start). A layout that fits is returned whole, as its only
 * buffer, so its packing does not change. A parameter larger than `limit` cannot be split and is an error naming it;
 * `what` says whose layout it is (a model, and the executor the limit is of).
 */
export function chunkLayout(layout: Layout, limit: number, what = "packing"): Layout[] {
  if (!(limit >= 1) || (Number.isFinite(limit) && !Number.isInteger(limit))) {
    throw new Error(`${what}: the limit per packed buffer must be a positive integer, got ${limit}`);
  }
  if (layout.total <= limit) return [layout];
  const chunks: Layout[] = [];
  let cur: Layout = { entries: [], total: 0 };
  for (const e of layout.entries) {
    if (e.size > limit) {
      throw new Error(
        `${what}: parameter "${e.path}" [${e.shape}] has ${e.size.toLocaleString("en")} elements, over the limit of ` +
          `${limit.toLocaleString("en")} elements per packed buffer; a parameter is never split`,
      );
    }
    if (cur.total + e.size > limit) {
      chunks.push(cur);
      cur = { entries: [], total: 0 };
    }
    cur.entries.push({ ...e, shape: [...e.shape], offset: cur.total });
    cur.total += e.size;
  }
  chunks.push(cur);
  return chunks;
}

/** The names of a group's `n` buffers: `name` itself for one (unchanged by chunking), else `name.0` … `name.<n-1>`. */
export function chunkNames(name: string, n: number): string[] {
  return n === 1 ? [name] : Array.from({ length: n }, (_, i) => `${name}.${i}`);
}

/** `unpack` over the buffers of `chunkLayout`: every parameter, viewed in its buffer. */
export function unpackChunks(flats: readonly Tensor[], chunks: readonly Layout[]): Record<string, Tensor> {
  if (flats.length !== chunks.length) fail("unpackChunks", `${flats.length} buffers for ${chunks.length} chunks`);
  return Object.assign({}, ...chunks.map((c, i) => unpack(flats[i], c)));
}

/** `pack` into the buffers of `chunkLayout`, one tensor per buffer. */
export function packChunks(tensors: Record<string, Tensor>, chunks: readonly Layout[]): Tensor[] {
  return chunks.map((c) => pack(tensors, c));
}

/** `packHost` into the buffers of `chunkLayout`. */
export function packHostChunks(arrays: Record<string, ArrayLike<number>>, chunks: readonly Layout[]): Float32Array[] {
  return chunks.map((c) => packHost(arrays, c));
}

/** `unpackHost` over the buffers of `chunkLayout`. */
export function unpackHostChunks(
  flats: readonly ArrayLike<number>[],
  chunks: readonly Layout[],
): Record<string, Float32Array> {
  if (flats.length !== chunks.length) {
    throw new Error(`unpackHostChunks: ${flats.length} buffers, ${chunks.length} chunks`);
  }
  return Object.assign({}, ...chunks.map((c, i) => unpackHost(flats[i], c)));
}

/**
 * A packed group's graph inputs, one per buffer of `chunks` under `chunkNames(name, …)`, and its parameters viewed in
 * them: what a graph holding a model's weights resident (a sampler's UNet, a VAE) declares.
 */
export function packedInputs(
  tr: Trace,
  name: string,
  chunks: readonly Layout[],
): { names: string[]; params: Record<string, Tensor> } {
  const names = chunkNames(name, chunks.length);
  return { names, params: unpackChunks(names.map((n, i) => tr.input(n, [chunks[i].total])), chunks) };
}

/**
 * A frozen model's weights in a graph that only reads them (a sampler's UNet, a VAE): constants where the model fits
 * `limit` elements (the executor's `constantLimit`), else the graph inputs of `packedInputs`, with `uploads` giving
 * each input's data for the store.
 */
export function frozenWeights(
  tr: Trace,
  name: string,
  chunks: readonly Layout[],
  weights: Record<string, ArrayLike<number>>,
  limit: number,
): { params: Record<string, Tensor>; uploads: [string, Float32Array][] } {
  const flats = packHostChunks(weights, chunks);
  if (chunks.reduce((a, c) => a + c.total, 0) <= limit) {
    return { params: unpackChunks(flats.map((f, i) => tr.constant(f, [chunks[i].total])), chunks), uploads: [] };
  }
  const w = packedInputs(tr, name, chunks);
  return { params: w.params, uploads: w.names.map((n, i) => [n, flats[i]]) };
}

/**
 * Splits one flat array of a whole layout into its chunks' buffers (views, no copy): what a buffer saved whole
 * becomes where the executor's limit splits it.
 */
export function splitFlat(flat: Float32Array, chunks: readonly Layout[]): Float32Array[] {
  const total = chunks.reduce((a, c) => a + c.total, 0);
  if (flat.length !== total) throw new Error(`splitFlat: ${flat.length} values, expected ${total}`);
  let at = 0;
  return chunks.map((c) => flat.subarray(at, at += c.total));
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
