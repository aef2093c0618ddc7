/**
 * The page's local server (`deno task serve`): web/index.html, web/app.ts bundled for the browser by `deno bundle`
 * once at start, onnxruntime-web's wasm files beside the bundle (where its code looks for them: next to its own
 * module's URL), and an exported folder under `/model/`. It listens on 127.0.0.1 only.
 *
 * @module
 */

const WEB = new URL("./", import.meta.url);

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  mjs: "text/javascript; charset=utf-8",
  json: "application/json",
  wasm: "application/wasm",
  png: "image/png",
  md: "text/markdown; charset=utf-8",
};

/** What `servePage` serves. */
export interface ServeOptions {
  /** The exported folder served at `/model/`; a missing one is served as missing (the page shows the error). */
  model: string;
  /** 0 picks a free port. */
  port?: number;
}

/** A running page server. */
export interface PageServer {
  /** The page's URL, http://127.0.0.1:<port>/. */
  url: string;
  /** Resolves when the server has stopped. */
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * web/app.ts as one browser module. onnxruntime-node stays out: the core imports it only for the `cpu` executor,
 * which a page never asks for, and its native binding cannot be bundled.
 */
export async function bundlePage(): Promise<Uint8Array> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "browser", "--external", "onnxruntime-node"]
      .concat([`--config=${new URL("../deno.json", WEB).pathname}`, new URL("app.ts", WEB).pathname]),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(r.stderr).trim();
  if (r.code !== 0 || r.stdout.length === 0) throw new Error(`deno bundle web/app.ts failed: ${err.split("\n")[0]}`);
  return r.stdout;
}

/** The folder of onnxruntime-web's dist files (the version deno.json pins), as the core resolves it. */
function ortDist(): string {
  return new URL("./", import.meta.resolve("onnxruntime-web")).pathname;
}

function typed(body: Uint8Array, name: string): Response {
  const ext = name.slice(name.lastIndexOf(".") + 1);
  return new Response(body as Uint8Array<ArrayBuffer>, {
    headers: { "content-type": TYPES[ext] ?? "application/octet-stream", "cache-control": "no-store" },
  });
}

async function fileResponse(path: string): Promise<Response> {
  try {
    return typed(await Deno.readFile(path), path);
  } catch {
    return new Response("not found", { status: 404 });
  }
}

/** Starts the server; the bundle is built before it listens, so a page never sees a half-built module. */
export async function servePage(opts: ServeOptions): Promise<PageServer> {
  const bundle = await bundlePage(), dist = ortDist(), model = opts.model.replace(/\/+$/, "");
  const routes = (path: string): Promise<Response> | Response => {
    if (path === "/" || path === "/index.html") return fileResponse(new URL("index.html", WEB).pathname);
    if (path === "/app.js") return typed(bundle, path);
    if (/^\/ort-wasm-[\w.-]+\.(wasm|mjs)$/.test(path)) return fileResponse(`${dist}${path.slice(1)}`);
    if (path.startsWith("/model/")) return fileResponse(`${model}/${path.slice("/model/".length)}`);
    return new Response("not found", { status: 404 });
  };
  let listening: (port: number) => void;
  const port = new Promise<number>((r) => listening = r);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: opts.port ?? 0,
    onListen: (a) => listening(a.port),
  }, (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.split("/").includes("..")) return new Response("no", { status: 403 });
    return routes(path);
  });
  return { url: `http://127.0.0.1:${await port}/`, finished: server.finished, shutdown: () => server.shutdown() };
}
