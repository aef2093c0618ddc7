/**
 * The built-in stage, model and dataset kinds, and `registerBuiltins`, which registers them. Importing this module
 * registers nothing (`stages/mod.ts` is the module whose import does).
 *
 * @module
 */
import {
  type AnyDataset,
  type AnyModel,
  type AnyStage,
  registerDataset,
  registerModel,
  registerStage,
} from "../pipeline/stage.ts";
import { checkpoint } from "./checkpoint.ts";
import { dataLoad } from "./data.ts";
import { latentData } from "./latent_data.ts";
import { toyFunction } from "../datasets/toy_function.ts";
import { emoji } from "../datasets/emoji.ts";
import { fashionMnist } from "../datasets/fashion_mnist.ts";
import { imageFolder } from "../datasets/image_folder.ts";
import { emaStage } from "./ema.ts";
import { metrics } from "./metrics.ts";
import { model } from "./model.ts";
import { mse } from "./mse.ts";
import { crossEntropyStage } from "./cross_entropy.ts";
import { optimizer } from "./optimizer.ts";
import { textEncode } from "./text_encode.ts";
import { diffusionNoise } from "./diffusion_noise.ts";
import { sample } from "./sample.ts";
import { evalReport } from "./eval_report.ts";
import { fashionReport } from "./fashion_report.ts";
import { weightedSum } from "./sum.ts";
import { addNoise } from "./add/add_noise.ts";
import { addStudent } from "./add/add_student.ts";
import { addDistill } from "./add/add_distill.ts";
import { addDiscriminatorStage } from "./add/add_discriminator.ts";
import { teacherPairs } from "./teacher_pairs.ts";
import { featureMse } from "./feature_mse.ts";
import { dmd } from "./dmd.ts";
import { addDiscriminator } from "../models/add_discriminator.ts";
import { mobilenetV2 } from "../models/feature_net.ts";
import { mlp } from "../models/mlp.ts";
import { fashionCnn } from "../models/fashion_cnn.ts";
import { unet } from "../models/unet.ts";
import { diffusersUnet } from "../models/diffusers/unet_kind.ts";
import { diffusersVae } from "../models/diffusers/vae_kind.ts";

/** The built-in stage kinds. */
export const BUILTIN_STAGES: readonly AnyStage[] = [
  dataLoad,
  latentData,
  model,
  mse,
  crossEntropyStage,
  optimizer,
  emaStage,
  checkpoint,
  metrics,
  textEncode,
  diffusionNoise,
  sample,
  evalReport,
  fashionReport,
  weightedSum,
  addNoise,
  addStudent,
  addDistill,
  addDiscriminatorStage,
  teacherPairs,
  featureMse,
  dmd,
];

/** The built-in model kinds. */
export const BUILTIN_MODELS: readonly AnyModel[] = [
  mlp,
  fashionCnn,
  unet,
  addDiscriminator,
  mobilenetV2,
  diffusersUnet,
  diffusersVae,
];

/** The built-in dataset kinds. */
export const BUILTIN_DATASETS: readonly AnyDataset[] = [
  toyFunction,
  emoji,
  fashionMnist,
  imageFolder,
];

/** Registers every built-in kind (again is a no-op), so a config can name them beside a user's own. */
export function registerBuiltins(): void {
  for (const s of BUILTIN_STAGES) registerStage(s);
  for (const m of BUILTIN_MODELS) registerModel(m);
  for (const d of BUILTIN_DATASETS) registerDataset(d);
}
