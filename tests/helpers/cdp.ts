// A tiny Chrome DevTools Protocol client over Deno's WebSocket: launches headless Chromium on a free debugging port
// (its ws URL read from stderr), opens pages as flattened target sessions and evaluates in them. Chromium may reach
// loopback only (host resolver rules), so a test page cannot fetch anything from the network.

/** Chromium's executable: $CHROMIUM, else the first of Debian's and other usual names on PATH; null when absent. */
export async function findChromium(): Promise<string | null> {
  const env = Deno.env.get("CHROMIUM");
  if (env) return env;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").filter(Boolean)) {
    for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
      if ((await Deno.stat(`${dir}/${name}`).catch(() => null))?.isFile) return `${dir}/${name}`;
    }
  }
  return null;
}

type Pending = { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void };

/** One browser: its process, its DevTools socket and the commands in flight. */
export class Chromium {
  private next = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly events: ((m: Record<string, unknown>) => void)[] = [];

  private constructor(private readonly child: Deno.ChildProcess, private readonly ws: WebSocket, readonly dir: string) {
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data as string);
      const p = m.id !== undefined ? this.pending.get(m.id) : undefined;
      if (p) {
        this.pending.delete(m.id);
        if (m.error) p.reject(new Error(`CDP: ${m.error.message}`));
        else p.resolve(m.result);
      } else for (const f of this.events) f(m);
    };
  }

  /** Starts `exe` headless with a fresh profile; fails after `timeoutMs` without a DevTools URL. */
  static async launch(exe: string, timeoutMs = 30_000): Promise<Chromium> {
    const dir = await Deno.makeTempDir({ prefix: "chromium-" });
    const child = new Deno.Command(exe, {
      args: ["--headless=new", "--remote-debugging-port=0", `--user-data-dir=${dir}`, "--no-sandbox"]
        .concat(["--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync"])
        .concat(["--disable-background-networking", "--disable-component-update", "--mute-audio"])
        .concat(["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=800,700"])
        .concat(["about:blank"]),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const url = await wsUrl(child.stderr, timeoutMs).catch(async (e) => {
      child.kill();
      await child.status;
      throw e;
    });
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`cannot connect to Chromium's DevTools at ${url}`));
    });
    return new Chromium(child, ws, dir);
  }

  /** Sends one command (to a page when `sessionId` is given) and waits for its result. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  /** Opens `url` in a new page and returns it once attached. */
  async open(url: string): Promise<Page> {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    const page = new Page(this, sessionId as string);
    await page.send("Runtime.enable");
    this.events.push((m) => {
      if (m.sessionId === sessionId && m.method === "Runtime.consoleAPICalled") page.console.push(consoleText(m));
      if (m.sessionId === sessionId && m.method === "Runtime.exceptionThrown") page.console.push(JSON.stringify(m));
    });
    await page.send("Page.navigate", { url });
    return page;
  }

  /** Ends the browser and removes its profile. */
  async close(): Promise<void> {
    this.ws.close();
    try {
      this.child.kill();
    } catch {
      // Already gone.
    }
    await this.child.status;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

function consoleText(m: Record<string, unknown>): string {
  const args = (m.params as { args?: { value?: unknown; description?: string }[] }).args ?? [];
  return args.map((a) => a.value ?? a.description ?? "").join(" ");
}

/** Reads Chromium's stderr until it prints "DevTools listening on ws://…", then drains the rest in the background. */
async function wsUrl(stderr: ReadableStream<Uint8Array>, timeoutMs: number): Promise<string> {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const timer = setTimeout(() => reader.cancel(), timeoutMs);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`Chromium gave no DevTools URL: ${seen.trim().split("\n").slice(-3).join(" | ")}`);
      seen += value;
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) {
        (async () => {
          while (!(await reader.read().catch(() => ({ done: true }))).done) { /* drain */ }
        })();
        return m[1];
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/** One page of the browser. */
export class Page {
  /** The page's console lines and uncaught exceptions, for a failing test's message. */
  readonly console: string[] = [];
  constructor(private readonly browser: Chromium, private readonly sessionId: string) {}

  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    return this.browser.send(method, params, this.sessionId);
  }

  /** The value of a JavaScript expression in the page (promises awaited); a thrown error rejects. */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
    if (r.exceptionDetails) throw new Error(`page: ${JSON.stringify(r.exceptionDetails).slice(0, 500)}`);
    return (r.result as { value: T }).value;
  }

  /** Polls `expression` until it is truthy; fails after `timeoutMs`. */
  async waitFor<T>(expression: string, timeoutMs: number): Promise<T> {
    const end = Date.now() + timeoutMs;
    while (true) {
      const v = await this.evaluate<T>(expression).catch(() => undefined);
      if (v) return v;
      if (Date.now() > end) {
        throw new Error(`page: timed out waiting for ${expression}; console: ${this.console.join(" | ")}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A PNG of the viewport. */
  async screenshot(): Promise<Uint8Array> {
    const { data } = await this.send("Page.captureScreenshot", { format: "png" });
    return Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0));
  }
}
