/**
 * The built-in stage, model and dataset kinds: one registration line each. Importing this module registers them.
 *
 * @module
 */
import { registerDataset, registerModel, registerStage } from "../pipeline/stage.ts";
import { checkpoint } from "./checkpoint.ts";
import { dataLoad } from "./data_load.ts";
import { toyFunction } from "./data/toy_function.ts";
import { emoji } from "./data/emoji.ts";
import { fashionMnist } from "./data/fashion_mnist.ts";
import { imageFolder } from "./data/image_folder.ts";
import { emaStage } from "./ema.ts";
import { metrics } from "./metrics.ts";
import { model } from "./model.ts";
import { mse } from "./mse.ts";
import { crossEntropyStage } from "./cross_entropy.ts";
import { optimizer } from "./optimizer.ts";
import { textEncode } from "./text_encode.ts";
import { diffusionNoise } from "./diffusion_noise.ts";
import { sample } from "./sample.ts";
import { addReport } from "./add_report.ts";
import { fashionReport } from "./fashion_report.ts";
import { weightedSum } from "./weighted_sum.ts";
import { addNoise } from "./add/noise.ts";
import { addStudent } from "./add/student.ts";
import { addDistill } from "./add/distill.ts";
import { addDiscriminatorStage } from "./add/discriminator.ts";
import { teacherPairs } from "./add/teacher_pairs.ts";
import { featureMse } from "./feature_mse.ts";
import { dmd } from "./dmd.ts";
import { addDiscriminator } from "../models/add_discriminator.ts";
import { mobilenetV2 } from "../models/feature_net.ts";
import { mlp } from "../models/mlp.ts";
import { fashionCnn } from "../models/fashion_cnn.ts";
import { unet } from "../models/unet.ts";

registerStage(dataLoad);
registerStage(model);
registerStage(mse);
registerStage(crossEntropyStage);
registerStage(optimizer);
registerStage(emaStage);
registerStage(checkpoint);
registerStage(metrics);
registerStage(textEncode);
registerStage(diffusionNoise);
registerStage(sample);
registerStage(addReport);
registerStage(fashionReport);
registerStage(weightedSum);
registerStage(addNoise);
registerStage(addStudent);
registerStage(addDistill);
registerStage(addDiscriminatorStage);
registerStage(teacherPairs);
registerStage(featureMse);
registerStage(dmd);

registerModel(mlp);
registerModel(fashionCnn);
registerModel(unet);
registerModel(addDiscriminator);
registerModel(mobilenetV2);

registerDataset(toyFunction);
registerDataset(emoji);
registerDataset(fashionMnist);
registerDataset(imageFolder);
