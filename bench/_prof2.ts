import * as ort from "onnxruntime-node";
import { lowerToOnnx } from "../engine/onnx/lower.ts";
import { blockStepGraph } from "./block.ts";
import { graphInputs } from "../engine/ir.ts";
const { graph } = blockStepGraph({ batch: 8, channels: 32, size: 32 });
for (const target of ["cpu", "webgpu", "cpu", "webgpu"] as const) {
const model = lowerToOnnx(graph, target);
const s = await ort.InferenceSession.create(model, { executionProviders: ["cpu"], graphOptimizationLevel: "all", intraOpNumThreads: 2, interOpNumThreads: 1 });
const feeds: Record<string, ort.Tensor> = {};
for (const i of graphInputs(graph)) { const n = i.shape.reduce((a,b)=>a*b,1); feeds[i.name] = new ort.Tensor("float32", Float32Array.from({length:n},()=>Math.random()*0.1), i.shape); }
feeds.step = new ort.Tensor("float32", Float32Array.of(1), []);
for (let k = 0; k < 20; k++) await s.run(feeds);
const ts=[]; for (let k = 0; k < 30; k++) { const t0 = performance.now(); await s.run(feeds); ts.push(performance.now()-t0);} ts.sort((a,b)=>a-b); console.log(target, ts[15]);
}
