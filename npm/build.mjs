#!/usr/bin/env node
// Builds dorun's npm packages from this repository (nothing is published from here):
//
//   dorun             the `dorun` command (a wrapper that runs the binary), dorun/test, types
//   @dorun/<platform> only the stripped binary, with os/cpu/libc fields; an optional
//                     dependency of `dorun` pinned to the same version
//
// Usage: node npm/build.mjs [--out DIR] [--binary PLATFORM=PATH]... [--version V] [--no-pack]
//
//   --binary  a binary for linux-x64, linux-arm64, darwin-arm64 or darwin-x64 (repeatable);
//             default: this machine's platform = target/release/dorun
//   --out     where packages are staged (DIR/stage) and packed (DIR/*.tgz); default target/npm
//   --version default: the workspace version in Cargo.toml
//
// Prints the tarballs' paths, one a line, and writes them to DIR/tarballs.txt.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);

const PLATFORMS = {
  "linux-x64": { os: "linux", cpu: "x64", libc: "glibc", strip: ["strip", "llvm-strip"] },
  "linux-arm64": {
    os: "linux",
    cpu: "arm64",
    libc: "glibc",
    strip: ["aarch64-linux-gnu-strip", "llvm-strip"],
  },
  "darwin-arm64": { os: "darwin", cpu: "arm64", strip: ["llvm-strip", "strip"] },
  "darwin-x64": { os: "darwin", cpu: "x64", strip: ["llvm-strip", "strip"] },
};

function fail(message) {
  process.stderr.write(`npm/build.mjs: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const options = { out: path.join(root, "target", "npm"), binaries: {}, pack: true };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--out") options.out = path.resolve(value());
    else if (arg === "--version") options.version = value();
    else if (arg === "--no-pack") options.pack = false;
    else if (arg === "--binary") {
      const [key, file] = value().split(/=(.*)/s);
      if (!PLATFORMS[key] || !file) {
        fail(`--binary takes PLATFORM=PATH, PLATFORM one of ${Object.keys(PLATFORMS).join(", ")}`);
      }
      options.binaries[key] = path.resolve(file);
    } else fail(`unknown argument ${arg}`);
  }
  if (Object.keys(options.binaries).length === 0) {
    const key = `${process.platform}-${process.arch}`;
    if (!PLATFORMS[key]) fail(`no binary given, and ${key} is not a platform packages are built for`);
    options.binaries[key] = path.join(root, "target", "release", "dorun");
  }
  options.version ??= workspaceVersion();
  return options;
}

function workspaceVersion() {
  const toml = fs.readFileSync(path.join(root, "Cargo.toml"), "utf8");
  const section = toml.split(/^\[workspace\.package\]$/m)[1] ?? "";
  const match = /^version\s*=\s*"([^"]+)"/m.exec(section);
  if (!match) fail("no version in Cargo.toml's [workspace.package]");
  return match[1];
}

function writeJson(file, value) {
  fs.writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

function which(command) {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const candidate = path.join(dir, command);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {}
  }
  return null;
}

/** Copies `source` to `target` without symbols and debug info. */
function stripInto(key, source, target) {
  const tool = PLATFORMS[key].strip.map(which).find(Boolean);
  if (!tool) fail(`no strip tool for ${key} (tried ${PLATFORMS[key].strip.join(", ")})`);
  const args = PLATFORMS[key].os === "darwin" ? ["-x", "-o", target, source] : ["--strip-all", "-o", target, source];
  execFileSync(tool, args, { stdio: "inherit" });
  fs.chmodSync(target, 0o755);
}

/**
 * The newest glibc symbol version a Linux binary needs (its floor), measured with
 * `objdump -T` (the dynamic symbols' GLIBC_x.y versions).
 */
function glibcFloor(binary) {
  let listing;
  try {
    listing = execFileSync("objdump", ["-T", binary], { encoding: "utf8", maxBuffer: 256 << 20 });
  } catch (error) {
    fail(`cannot measure the glibc floor of ${binary} (objdump -T): ${error.message}`);
  }
  const versions = [...listing.matchAll(/\bGLIBC_(\d+)\.(\d+)(?:\.\d+)?\b/g)].map((m) => [
    Number(m[1]),
    Number(m[2]),
  ]);
  if (versions.length === 0) fail(`${binary} needs no GLIBC_ symbol: is it a Linux glibc binary?`);
  versions.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const [major, minor] = versions[versions.length - 1];
  return `${major}.${minor}`;
}

function copyDir(source, target) {
  fs.cpSync(source, target, { recursive: true });
}

function stageMain(options, stage) {
  const dir = path.join(stage, "dorun");
  copyDir(path.join(here, "dorun"), dir);
  fs.copyFileSync(path.join(root, "LICENSE"), path.join(dir, "LICENSE"));
  // The same declarations for `import` (.d.mts) and `require` (.d.ts).
  fs.copyFileSync(path.join(dir, "test", "index.d.ts"), path.join(dir, "test", "index.d.mts"));
  fs.chmodSync(path.join(dir, "bin", "dorun.js"), 0o755);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  manifest.version = options.version;
  manifest.optionalDependencies = Object.fromEntries(
    Object.keys(PLATFORMS).map((key) => [`@dorun/${key}`, options.version]),
  );
  writeJson(path.join(dir, "package.json"), manifest);
  return dir;
}

function stagePlatform(options, stage, key, binary) {
  if (!fs.existsSync(binary)) fail(`no binary for ${key} at ${binary} (build it first)`);
  const platform = PLATFORMS[key];
  const dir = path.join(stage, key);
  fs.mkdirSync(path.join(dir, "bin"), { recursive: true });
  const target = path.join(dir, "bin", "dorun");
  stripInto(key, binary, target);
  const manifest = {
    name: `@dorun/${key}`,
    version: options.version,
    description: `The dorun binary for ${key} (installed by the dorun package)`,
    license: "MIT",
    os: [platform.os],
    cpu: [platform.cpu],
    ...(platform.libc ? { libc: [platform.libc] } : {}),
    files: ["bin/dorun", "LICENSE", "README.md"],
    preferUnplugged: true,
  };
  let floor = null;
  if (platform.libc === "glibc") {
    floor = glibcFloor(target);
    // Read by the dorun package to explain a too-old glibc before the loader refuses.
    manifest.dorun = { glibc: floor };
  }
  writeJson(path.join(dir, "package.json"), manifest);
  fs.copyFileSync(path.join(root, "LICENSE"), path.join(dir, "LICENSE"));
  fs.writeFileSync(
    path.join(dir, "README.md"),
    `# @dorun/${key}\n\nThe \`dorun\` binary for ${key}` +
      (floor ? ` (needs glibc ${floor} or newer)` : "") +
      ". Install the `dorun` package instead: it depends on this one and runs the binary.\n",
  );
  return { dir, floor, bytes: fs.statSync(target).size };
}

function pack(dir, out) {
  const listing = execFileSync(
    "npm",
    ["pack", "--json", "--pack-destination", out, dir],
    { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 },
  );
  const [{ filename }] = JSON.parse(listing);
  return path.join(out, filename);
}

const options = parseArgs(process.argv.slice(2));
const stage = path.join(options.out, "stage");
fs.rmSync(options.out, { recursive: true, force: true });
fs.mkdirSync(stage, { recursive: true });

const staged = [stageMain(options, stage)];
for (const [key, binary] of Object.entries(options.binaries)) {
  const { dir, floor, bytes } = stagePlatform(options, stage, key, binary);
  process.stderr.write(
    `@dorun/${key}: ${(bytes / 2 ** 20).toFixed(1)} MiB stripped` +
      (floor ? `, needs glibc >= ${floor}` : "") +
      "\n",
  );
  staged.push(dir);
}
const missing = Object.keys(PLATFORMS).filter((key) => !options.binaries[key]);
if (missing.length > 0) {
  process.stderr.write(`no binary given for ${missing.join(", ")}: those packages are not built\n`);
}
if (options.pack) {
  const tarballs = staged.map((dir) => pack(dir, options.out));
  fs.writeFileSync(path.join(options.out, "tarballs.txt"), `${tarballs.join("\n")}\n`);
  process.stdout.write(`${tarballs.join("\n")}\n`);
}
