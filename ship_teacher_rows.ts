/**
 * `deno task ship:teacher-rows <config> [--set path=value]…`: copies into the shipped file of each report stage of
 * the config (its `teacher_cache`) the teacher rows that runs of the config computed and stored in the cache folder
 * (`run.cache`, default `.cache/`), so a fresh clone reuses them. Runs never write shipped files themselves; this
 * task is the one way rows enter the source tree. Only rows of the config's teacher as it is now (its weights'
 * hash) are copied, so rows of an earlier teacher left in the cache do not travel.
 *
 * @module
 */
import { Command } from "commander";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cachedFor, shipRows } from "./evaluation/teacher_rows.ts";
import { weightsKey } from "./models/weights_key.ts";
import { ConfigError, loadConfig, type LoadedConfig } from "./pipeline/config.ts";
import { RunError } from "./pipeline/errors.ts";
import { initialWeights } from "./pipeline/init_weights.ts";
import { type Plan, planPipeline } from "./pipeline/plan.ts";
import "./stages/mod.ts";

const PROJECT_ROOT = fileURLToPath(new URL("./", import.meta.url));

/** One shipped file written: its path, and the keys added. */
export interface Shipped {
  stage: string;
  file: string;
  keys: string[];
}

/**
 * Ships the cached teacher rows of every stage whose params name a `teacher_cache` and a `teacher` model; stages
 * with nothing cached are reported with no keys.
 */
export async function shipTeacherRows(loaded: LoadedConfig, plan: Plan): Promise<Shipped[]> {
  const out: Shipped[] = [];
  for (const [name, st] of Object.entries(plan.stages)) {
    const p = st.params as { teacher_cache?: unknown; teacher?: unknown };
    if (typeof p?.teacher_cache !== "string" || typeof p.teacher !== "string") continue;
    // A frozen teacher's weights in a run are its initial ones.
    const weights = await initialWeights(loaded, plan, p.teacher, loaded.config.run.seed);
    const entries = await cachedFor(loaded.config.run.cache, p.teacher_cache, await weightsKey({}, weights));
    const file = join(PROJECT_ROOT, p.teacher_cache);
    out.push({ stage: name, file, keys: entries.length ? await shipRows(file, entries) : [] });
  }
  return out;
}

if (import.meta.main) {
  let code = 0;
  await new Command()
    .name("deno task ship:teacher-rows")
    .description("Copies the teacher rows a config's runs cached into the shipped files its report stages name.")
    .argument("<config>", "the pipeline's YAML file")
    .option("--set <path=value>", "override a config value (repeatable)", (v: string, a: string[]) => [...a, v], [])
    .action(async (file: string, o: { set: string[] }) => {
      try {
        const loaded = loadConfig(file, await Deno.readTextFile(file), o.set);
        const shipped = await shipTeacherRows(loaded, planPipeline(loaded));
        if (!shipped.length) console.log(`${file}: no stage names a teacher_cache; nothing to ship`);
        for (const s of shipped) {
          console.log(
            s.keys.length
              ? `${s.stage}: ${s.keys.length} row set(s) into ${s.file}`
              : `${s.stage}: nothing cached for this teacher in ${loaded.config.run.cache}/teacher_rows/; run the ` +
                `config first`,
          );
        }
      } catch (e) {
        if (e instanceof ConfigError) e.lines.forEach((l) => console.error(l));
        else if (e instanceof RunError || e instanceof Deno.errors.NotFound) console.error((e as Error).message);
        else throw e;
        code = 2;
      }
    })
    .parseAsync(Deno.args, { from: "user" });
  Deno.exit(code);
}
