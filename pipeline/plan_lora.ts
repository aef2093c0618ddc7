/**
 * Planning of low-rank adapters (`models.<name>.lora`, models/lora.ts): the base must be another declared model of
 * the same kind and params that no optimizer updates — its weights are the LoRA model's, held once in the store —
 * and each target must find weights to adapt. Each problem is one config error at the key that causes it.
 *
 * @module
 */
import { adaptable, adapterShapes, loraTargets } from "../models/lora.ts";
import type { Config } from "./config_schema.ts";
import { suggest } from "./config_issues.ts";
import type { Issues } from "./plan_issues.ts";
import type { Phase, Plan } from "./plan_types.ts";

/** Checks every model's `lora` and records the planned adapters on `models` (those whose kind and params parsed). */
export function checkLora(declared: Config["models"], models: Plan["models"], issues: Issues): void {
  for (const [name, m] of Object.entries(declared)) {
    const lora = m.lora, info = models[name];
    if (!lora || !info) continue;
    const at = ["models", name, "lora"];
    if (m.init !== undefined) {
      issues.add(
        ["models", name, "init"],
        `model "${name}" has LoRA: its weights are its base "${lora.base}"'s and its adapters start from B = 0, ` +
          `so it takes no init file (set init: null)`,
      );
    }
    const base = declared[lora.base];
    const others = Object.keys(declared).filter((n) => n !== name);
    if (lora.base === name) {
      issues.add([...at, "base"], `model "${name}" cannot be its own LoRA base; name a frozen model of the same kind`);
      continue;
    }
    if (!base) {
      issues.add([...at, "base"], `LoRA base "${lora.base}" is not declared${suggest(lora.base, others, "models")}`);
      continue;
    }
    if (base.lora) {
      issues.add([...at, "base"], `LoRA base "${lora.base}" has LoRA itself; the base must hold full weights`);
      continue;
    }
    const baseInfo = models[lora.base];
    if (!baseInfo) continue; // its own kind or params are wrong, and said so
    if (baseInfo.kind !== info.kind) {
      issues.add(
        [...at, "base"],
        `LoRA base "${lora.base}" is of kind ${baseInfo.kind}, model "${name}" of kind ${info.kind}: the base must ` +
          `be the same kind`,
      );
      continue;
    }
    const diff = firstDifference(info.params, baseInfo.params);
    if (diff) {
      issues.add(
        [...at, "base"],
        `LoRA base "${lora.base}" has other params than model "${name}" (${diff}): its weights must fit the model`,
      );
      continue;
    }
    const targets = checkTargets(name, lora.targets, info.shapes, [...at, "targets"], issues);
    if (!targets) continue;
    const spec = { rank: lora.rank, alpha: lora.alpha ?? lora.rank, targets };
    info.lora = { ...spec, base: lora.base, patterns: lora.targets, shapes: adapterShapes(spec) };
  }
}

/** The adapted weights of `targets`, or undefined (with issues) when one is not a regular expression or finds none. */
function checkTargets(
  name: string,
  targets: string[],
  shapes: Record<string, number[]>,
  at: (string | number)[],
  issues: Issues,
): Record<string, number[]> | undefined {
  let ok = true;
  const patterns: RegExp[] = [];
  targets.forEach((t, i) => {
    let re: RegExp;
    try {
      re = new RegExp(t);
    } catch (e) {
      issues.add([...at, i], `LoRA target "${t}" is not a regular expression (${(e as Error).message})`);
      ok = false;
      return;
    }
    if (Object.keys(loraTargets(shapes, [re])).length === 0) {
      const some = Object.keys(shapes).filter((p) => adaptable(shapes[p])).slice(0, 6);
      issues.add(
        [...at, i],
        `LoRA target "${t}" matches no 2-D or 4-D weight of model "${name}" (its weights: ${some.join(", ")}, …)`,
      );
      ok = false;
    }
    patterns.push(re);
  });
  return ok ? loraTargets(shapes, patterns) : undefined;
}

/** Where two params first differ, as `key: a vs b`; null when they are the same. */
function firstDifference(a: unknown, b: unknown, path = ""): string | null {
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object") {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
    for (const k of keys) {
      const d = firstDifference(
        (a as Record<string, unknown>)[k],
        (b as Record<string, unknown>)[k],
        path ? `${path}.${k}` : k,
      );
      if (d) return d;
    }
    return null;
  }
  return a === b ? null : `${path || "params"}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`;
}

/** A LoRA base must stay frozen: an optimizer that updates it would change the model's weights under it. */
export function checkLoraBases(models: Plan["models"], phases: Phase[], issues: Issues): void {
  for (const [name, m] of Object.entries(models)) {
    const by = m.lora && phases.find((p) => p.updates.includes(m.lora!.base));
    if (by) {
      issues.add(
        ["models", name, "lora", "base"],
        `LoRA base "${m.lora!.base}" is updated by optimizer "${by.optimizer}"; a base is frozen (train "${name}"'s ` +
          `adapters instead)`,
      );
    }
  }
}
