/**
 * FLOPs of a traced graph's contractions (matmuls, convolutions and the convolutions' two gradients), the work a
 * roofline compares with a GEMM rate. Elementwise and normalisation work is left out: it is memory-bound, and a
 * floor from the contractions alone is still a floor.
 *
 * @module
 */
import { type Node, size } from "../engine/ir.ts";

/** 2·(multiply-adds) of every matmul and convolution node of `g`. */
export function contractionFlops(g: { readonly nodes: readonly Node[] }): number {
  let flops = 0;
  for (const n of g.nodes) {
    const shapeOf = (i: number) => g.nodes[n.inputs[i]].shape;
    if (n.op === "matmul") {
      const a = shapeOf(0);
      flops += 2 * size(n.shape) * a[a.length - 1];
    } else if (n.op === "conv2d") {
      flops += 2 * size(n.shape) * size(shapeOf(1).slice(1));
    } else if (n.op === "conv2d_grad_input") {
      // Inputs (cotangent of the output, weight): the forward's work again.
      flops += 2 * size(shapeOf(0)) * size(shapeOf(1).slice(1));
    } else if (n.op === "conv2d_grad_weight") {
      // Inputs (x, cotangent of the output); the node's shape is the weight's.
      flops += 2 * size(shapeOf(1)) * size(n.shape.slice(1));
    }
  }
  return flops;
}
