/**
 * The emoji evaluation report (`evaluate.ts`'s `EvalReport`) as markdown.
 *
 * @module
 */
import { PIXEL_POOL } from "./eval_metrics.ts";
import type { EvalReport, NetInfo } from "./eval_report_types.ts";
import type { JudgeName } from "./fid.ts";

const fmt = (v: number, digits: number) => Number.isFinite(v) ? v.toFixed(digits) : String(v);
// Fréchet distances: 2 decimals, 3 below 1 (the InceptionV3 judge's distances on these images are small).
const fmtFd = (v: number) => fmt(v, Math.abs(v) < 1 ? 3 : 2);
const pct = (v: number) => `${(100 * v).toFixed(1)}%`;

/** Short network names for column headers. */
const SHORT: Readonly<Record<JudgeName, string>> = { inception_v3: "InceptionV3", mobilenet_v2: "MobileNetV2" };

/**
 * The report as markdown: one row per generator; FID-proxy columns (the judge) for every set, the FID on the
 * discriminator's network when computed, pixel FD, then top-1/top-5 per set, then ms/image — each feature column
 * names its network; below it the real-vs-real floors, what each column measures, the chance levels, the executor,
 * the date and `meta` (e.g. step, models).
 */
export function reportMarkdown(r: EvalReport, meta: Record<string, string | number | null> = {}): string {
  const jn = SHORT[r.judge.net], dn = r.discNet ? SHORT[r.discNet.net] : null;
  const head = [
    "generator",
    ...r.sets.map((s) => `${s.label} FID-proxy (${jn})`),
    ...(dn ? r.sets.map((s) => `${s.label} FID on the discriminator's own network (${dn})`) : []),
    ...r.sets.map((s) => `${s.label} pixel FD`),
    ...r.sets.flatMap((s) => [`${s.label} top-1 (${jn})`, `${s.label} top-5 (${jn})`]),
    "ms/image",
  ];
  const lines = [
    "# Evaluation report",
    "",
    `| ${head.join(" | ")} |`,
    `| ${head.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...r.rows.map((row) => {
      const cells = [
        row.name,
        ...r.sets.map((s) => fmtFd(row.sets[s.name].fid)),
        ...(dn ? r.sets.map((s) => fmtFd(row.sets[s.name].discFid ?? NaN)) : []),
        ...r.sets.map((s) => fmtFd(row.sets[s.name].pixelFd)),
        ...r.sets.flatMap((s) => [pct(row.sets[s.name].top1), pct(row.sets[s.name].top5)]),
        fmt(row.msPerImage, 1),
      ];
      return `| ${cells.join(" | ")} |`;
    }),
    "",
  ];
  for (const row of r.rows) {
    const bad = r.sets.filter((s) => row.sets[s.name].nonFinite > 0);
    if (bad.length) {
      lines.push(
        `**${row.name} produced NaN or infinite values** in ${
          bad.map((s) => `${row.sets[s.name].nonFinite} ${s.label} images`).join(" and ")
        }.`,
        "",
      );
    }
  }
  if (r.floor) {
    const la = r.sets.find((s) => s.name === r.floor!.a)!.label, lb = r.sets.find((s) => s.name === r.floor!.b)!.label;
    lines.push(
      `Real-vs-real floors (${la} real vs ${lb} real): FID-proxy ${fmtFd(r.floor.fid)}, ` +
        (dn ? `FID on the discriminator's network ${fmtFd(r.floor.discFid ?? NaN)}, ` : "") +
        `pixel FD ${fmtFd(r.floor.pixelFd)}`,
      "",
    );
  }
  lines.push(
    ...columnNotes(r),
    ...r.sets.map((s) =>
      `- ${s.label}: ${s.images} images, ${s.captions} distinct captions, retrieved among ${s.retrieval} real ` +
      `images; chance top-1 ${pct(s.chanceTop1)}, top-5 ${pct(s.chanceTop5)}`
    ),
    "",
  );
  lines.push(
    `Generators: ${
      r.rows.map((x) =>
        `${x.name} = ${x.sampler}${x.steps === null ? "" : ` ${x.steps} step${x.steps === 1 ? "" : "s"}`}` +
        (x.guidance !== null && x.guidance > 1 ? `, guidance ${x.guidance}` : "")
      ).join("; ")
    }.`,
    "",
    `- executor: ${r.executor}`,
    `- date: ${r.date}`,
    ...Object.entries(meta).map(([k, v]) => `- ${k}: ${v ?? "—"}`),
    `- ms/image: generation wall time only (no compilation, text encoding or feature extraction)`,
    "",
  );
  return lines.join("\n");
}

// What each column measures and on which network; ends with the lead-in of the chance-level list.
function columnNotes(r: EvalReport): string[] {
  const j = r.judge, d = r.discNet;
  const net = (n: NetInfo) => `${n.label}, ${n.dim}-d pooled features, images upsampled 32² → ${n.size}² (bilinear)`;
  const lines = [
    `FID-proxy: Fréchet distance of the judge's features: ${net(j)}.` +
    (j.net === "mobilenet_v2"
      ? " This is the network ADD's discriminator and perceptual loss train against: a student can lower it by " +
        "fooling that network."
      : " Not the network the discriminator and the perceptual loss use."),
    "",
  ];
  if (d) {
    lines.push(
      `FID on the discriminator's own network: the same distance on ${net(d)} — the network the student was ` +
        "trained against (discriminator and perceptual loss), so a low value can come from fooling it; for " +
        "comparison.",
      "",
    );
  }
  lines.push(
    `Pixel FD: Fréchet distance of the images average-pooled to ${PIXEL_POOL}×${PIXEL_POOL} per channel, a check ` +
      "that uses no network (ImageNet networks are nearly blind to colour).",
    "",
    "Text fidelity: share of generated images whose nearest (top-1) or 5 nearest (top-5) real images, in the " +
      `judge's (${SHORT[j.net]}) pooled feature space, include one with the prompt's caption. Chance levels:`,
    "",
  );
  return lines;
}
