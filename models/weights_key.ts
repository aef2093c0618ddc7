/**
 * A content key for results that depend only on a model's weights and some settings (a frozen teacher's report rows,
 * its regression targets), so caches of them are reused exactly when nothing they depend on changed.
 *
 * @module
 */

const hex = (b: ArrayBuffer): string => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");

/** SHA-256 (hex) of the settings' JSON and of every weight tensor, in sorted name order. */
export async function weightsKey(settings: unknown, weights: Record<string, Float32Array>): Promise<string> {
  const head = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(settings))),
  );
  const parts = [head, ...Object.keys(weights).sort().map((k) => bytesOf(weights[k]))];
  const all = new Uint8Array(parts.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of parts) {
    all.set(a, at);
    at += a.length;
  }
  return hex(await crypto.subtle.digest("SHA-256", all));
}

const bytesOf = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
