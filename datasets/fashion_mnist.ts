/**
 * `fashion_mnist` dataset: Zalando's Fashion-MNIST (MIT) from Debian's `dataset-fashion-mnist` package, 60,000 train
 * and 10,000 test 28×28 grey images of 10 clothing classes, captioned by class name ("ankle boot").
 *
 * Images are zero-padded by `pad` pixels a side (2 by default, giving 32×32; the padding is black like the images'
 * own background, so it maps to −1) and served with `channels` 3 (grey replicated) or 1.
 *
 * @module
 */
import { z } from "zod";
import type { DatasetDef } from "../pipeline/stage.ts";
import { type CaptionedDataset, imageDataset } from "./image_util.ts";

/** Where Debian's `dataset-fashion-mnist` puts the files. */
export const FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist";

/** Class names, by label, as captions. */
export const FASHION_MNIST_CLASSES: readonly string[] = [
  "t-shirt/top",
  "trouser",
  "pullover",
  "dress",
  "coat",
  "sandal",
  "shirt",
  "sneaker",
  "bag",
  "ankle boot",
];

const Params = z.strictObject({
  /** "train" (60,000 images) or "test" (10,000). */
  split: z.enum(["train", "test"]).default("train"),
  /** 3: grey replicated to RGB; 1: grey. */
  channels: z.union([z.literal(1), z.literal(3)]).default(3),
  /** Black pixels added on each side: 2 turns 28×28 into 32×32. */
  pad: z.number().int().min(0).max(64).default(2),
  /** Folder of the four `*-ubyte.gz` files. */
  dir: z.string().default(FASHION_MNIST_DIR),
});

/** Parameters of the `fashion_mnist` dataset, after defaults. */
export type FashionMnistParams = z.output<typeof Params>;

const folderOf = (path: string) => path.slice(0, path.lastIndexOf("/")) || "/";

async function gunzip(path: string): Promise<Uint8Array> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `fashion_mnist: ${path} not found; install Debian's package: apt-get install -y dataset-fashion-mnist`,
      );
    }
    if (e instanceof Deno.errors.NotCapable) {
      throw new Error(`fashion_mnist: no read permission for ${path}; run deno with --allow-read=${folderOf(path)}`);
    }
    throw new Error(`fashion_mnist: cannot open ${path} (${(e as Error).message})`);
  }
  try {
    return new Uint8Array(await new Response(file.readable.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
  } catch (e) {
    throw new Error(`fashion_mnist: ${path} is not a readable gzip file (${(e as Error).message})`);
  }
}

/** Parses an IDX file (big-endian header: 0, 0, type 0x08 = ubyte, rank; then the dims; then the bytes). */
export function parseIdx(bytes: Uint8Array, path: string): { dims: number[]; data: Uint8Array } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4 || dv.getUint16(0) !== 0 || bytes[2] !== 0x08) {
    throw new Error(`fashion_mnist: ${path} is not an IDX file of unsigned bytes`);
  }
  const rank = bytes[3], dims: number[] = [];
  for (let i = 0; i < rank; i++) dims.push(dv.getUint32(4 + 4 * i));
  const start = 4 + 4 * rank, count = dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== start + count) {
    throw new Error(`fashion_mnist: ${path} holds ${bytes.length - start} bytes, its header [${dims}] says ${count}`);
  }
  return { dims, data: bytes.subarray(start) };
}

/** Loads a Fashion-MNIST split. */
export async function loadFashionMnist(p: FashionMnistParams): Promise<CaptionedDataset> {
  const stem = p.split === "train" ? "train" : "t10k";
  const imgPath = `${p.dir}/${stem}-images-idx3-ubyte.gz`, lblPath = `${p.dir}/${stem}-labels-idx1-ubyte.gz`;
  // One after the other, so that when both are missing the error always names the images file.
  const images = parseIdx(await gunzip(imgPath), imgPath);
  const labels = parseIdx(await gunzip(lblPath), lblPath);
  const [n, h, w] = images.dims;
  // `fields` promises 28×28, as every Fashion-MNIST file is.
  if (images.dims.length !== 3 || h !== 28 || w !== 28 || labels.dims.length !== 1 || labels.dims[0] !== n) {
    throw new Error(`fashion_mnist: ${imgPath} [${images.dims}] and ${lblPath} [${labels.dims}] do not match`);
  }
  const ids = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    ids[i] = labels.data[i];
    if (ids[i] >= FASHION_MNIST_CLASSES.length) throw new Error(`fashion_mnist: ${lblPath}: label ${ids[i]} at ${i}`);
  }
  const H = h + 2 * p.pad, W = w + 2 * p.pad, pixels = new Uint8Array(n * H * W);
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < h; y++) {
      pixels.set(images.data.subarray((i * h + y) * w, (i * h + y + 1) * w), (i * H + y + p.pad) * W + p.pad);
    }
  }
  return imageDataset(pixels, { channels: 1, height: H, width: W }, ids, [...FASHION_MNIST_CLASSES], p.channels);
}

/** The fashion_mnist dataset kind. */
export const fashionMnist: DatasetDef<FashionMnistParams> = {
  kind: "fashion_mnist",
  doc: "Fashion-MNIST (Debian dataset-fashion-mnist), 28x28 zero-padded to 32x32, class names as captions",
  params: Params,
  fields: (p) => ({
    image: { dtype: "f32", shape: [p.channels, 28 + 2 * p.pad, 28 + 2 * p.pad] },
    caption_id: { dtype: "i32", shape: [] },
  }),
  load: (p) => loadFashionMnist(p),
};
