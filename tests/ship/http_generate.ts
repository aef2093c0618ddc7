// Run by http_test.ts in a subprocess with network access: serves an exported folder on 127.0.0.1 and draws from it
// by its http URL, as a web page would (every file fetched), writing the image's float32 bytes to a file.
//   deno run … tests/ship/http_generate.ts <export folder> <prompt> <steps> <seed> <out.f32>
import { ShippedGenerator } from "../../ship/generate_core.ts";

const [folder, prompt, steps, seed, out] = Deno.args;
const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
  const path = decodeURIComponent(new URL(req.url).pathname);
  if (path.includes("..")) return new Response("no", { status: 403 });
  try {
    return new Response(await Deno.readFile(`${folder}${path}`));
  } catch {
    return new Response("not found", { status: 404 });
  }
});
try {
  const g = await ShippedGenerator.load(new URL(`http://127.0.0.1:${server.addr.port}/`));
  const img = await g.generate({ prompt, steps: Number(steps), seed: Number(seed) });
  await g.dispose();
  await Deno.writeFile(out, new Uint8Array(img.buffer));
} finally {
  await server.shutdown();
}
