/**
 * Key-by-key validation of a diffusers model `config.json`: every key must be one the project reads, with a value it
 * supports, and the first that is not is one error line naming the key and the value, before anything is allocated.
 *
 * @module
 */
import { DiffusersConfigError } from "./scheduler_config.ts";

/** A predicate on a key's value and the words that say what it accepts. */
export type Check = [(v: unknown) => boolean, string];

export const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
export const is = (...xs: unknown[]): Check => [(v) => xs.includes(v), xs.map((x) => JSON.stringify(x)).join(" or ")];
export const bool: Check = [(v) => typeof v === "boolean", "true or false"];
export const positiveInt: Check = [posInt, "a positive integer"];
export const positive: Check = [(v) => typeof v === "number" && v > 0, "a positive number"];
export const nonNegativeInt: Check = [(v) => Number.isInteger(v) && (v as number) >= 0, "a non-negative integer"];
export const intList: Check = [
  (v) => Array.isArray(v) && v.length > 0 && v.every(posInt),
  "a list of positive integers",
];
export const listOf = (...names: string[]): Check => [
  (v) => Array.isArray(v) && v.every((x) => names.includes(x)),
  `a list of ${names.join(", ")}`,
];

/** A value as the error line shows it: JSON, cut short. */
export const show = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v);

/**
 * Checks a parsed config against `keys` (keys starting with `_` are diffusers' bookkeeping and pass) and returns it as
 * an object; throws one line for a non-object, another class, an unknown key or an unsupported value.
 */
export function checkKeys(
  json: unknown,
  source: string,
  className: string,
  keys: Record<string, Check>,
): Record<string, unknown> {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new DiffusersConfigError(source, `expected a JSON object, got ${show(json)}`);
  }
  const j = json as Record<string, unknown>;
  if (j._class_name !== undefined && j._class_name !== className) {
    throw new DiffusersConfigError(source, `_class_name ${show(j._class_name)} is not ${className}`);
  }
  for (const [k, v] of Object.entries(j)) {
    if (k.startsWith("_")) continue;
    if (!Object.hasOwn(keys, k)) throw new DiffusersConfigError(source, `${k}: unknown key (value ${show(v)})`);
    if (!keys[k][0](v)) {
      throw new DiffusersConfigError(source, `${k} ${show(v)} is not supported (expected ${keys[k][1]})`);
    }
  }
  return j;
}
