// Which Chromium the browser tests drive: $CHROMIUM if set, else the system's
// /usr/bin/chromium when present, else the headless Chromium that the npm package
// @sparticuz/chromium carries inside its tarball (no download at install time, so it
// installs offline and without root). That one is brotli-packed; it is unpacked once into
// node_modules/.cache/, version by version.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const SYSTEM = "/usr/bin/chromium";

export async function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  if (process.env.DORUN_BROWSER !== "npm" && existsSync(SYSTEM)) return SYSTEM;
  return await packagedChromium();
}

async function packagedChromium() {
  const { default: chromium } = await import("@sparticuz/chromium");
  const manifest = new URL("./node_modules/@sparticuz/chromium/package.json", import.meta.url);
  const { version } = JSON.parse(readFileSync(manifest, "utf8"));
  const cache = fileURLToPath(new URL("./node_modules/.cache/", import.meta.url));
  const unpacked = join(cache, `chromium-${version}`);
  const binary = join(unpacked, "chromium");
  if (existsSync(binary)) return binary;
  mkdirSync(cache, { recursive: true });
  // The package unpacks into os.tmpdir(), which follows $TMPDIR: a private directory, moved
  // into place in one rename, so two first runs at once never see a half-written binary.
  const staging = mkdtempSync(join(cache, ".unpacking-"));
  const tmpdir = process.env.TMPDIR;
  process.env.TMPDIR = staging;
  try {
    await chromium.executablePath();
  } finally {
    if (tmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = tmpdir;
  }
  chmodSync(staging, 0o755);
  chmodSync(join(staging, "chromium"), 0o755);
  try {
    renameSync(staging, unpacked);
  } catch (error) {
    rmSync(staging, { recursive: true, force: true });
    if (!existsSync(binary)) throw error;
  }
  return binary;
}
