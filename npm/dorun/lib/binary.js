"use strict";
// Where the dorun binary is, and why it cannot be used when it cannot. Shared by the `dorun`
// command (bin/dorun.js) and the test helper (dorun/test).
//
// The binary comes in one package per platform (@dorun/linux-x64, ...), each an optional
// dependency of this package with `os`/`cpu`/`libc` fields, so that npm installs only the
// one that fits. No install script is involved. DORUN_BINARY overrides the lookup (a binary
// built from source, or an unsupported platform).

const fs = require("node:fs");
const path = require("node:path");

/** The platforms a package is built for: `${process.platform}-${process.arch}`. */
const PLATFORMS = ["linux-x64", "linux-arm64", "darwin-arm64", "darwin-x64"];

class DorunBinaryError extends Error {
  constructor(message) {
    super(message);
    this.name = "DorunBinaryError";
  }
}

function platformKey() {
  return `${process.platform}-${process.arch}`;
}

/** The glibc version this Node runs on ("2.36"), or null: musl (Alpine) or not Linux. */
function glibcVersion() {
  if (process.platform !== "linux") return null;
  const report = process.report;
  // The report's network section can be slow (DNS) in some containers: left out, as we
  // only read the header, and the caller's setting restored.
  const excluded = report.excludeNetwork;
  try {
    if (excluded !== undefined) report.excludeNetwork = true;
    return report.getReport().header.glibcVersionRuntime || null;
  } catch {
    return null;
  } finally {
    if (excluded !== undefined) report.excludeNetwork = excluded;
  }
}

function olderVersion(a, b) {
  const [a1, a2] = a.split(".").map(Number);
  const [b1, b2] = b.split(".").map(Number);
  return a1 < b1 || (a1 === b1 && a2 < b2);
}

/** The package.json of an installed platform package, or null. */
function findPackage(key) {
  try {
    const file = require.resolve(`@dorun/${key}/package.json`, { paths: [__dirname] });
    return { dir: path.dirname(file), manifest: JSON.parse(fs.readFileSync(file, "utf8")) };
  } catch {
    return null;
  }
}

const FROM_SOURCE =
  "Or build dorun from source (the README's 'Building from source') and set DORUN_BINARY to " +
  "the binary's path.";

/**
 * The path of the dorun binary for this machine. Throws a DorunBinaryError whose message says
 * what is wrong and what to do when there is none that can run here.
 */
function binaryPath() {
  const override = process.env.DORUN_BINARY;
  if (override) {
    let stat;
    try {
      stat = fs.statSync(override);
    } catch {
      throw new DorunBinaryError(`DORUN_BINARY is set to ${override}, which does not exist.`);
    }
    if (!stat.isFile()) {
      throw new DorunBinaryError(`DORUN_BINARY is set to ${override}, which is not a file.`);
    }
    return override;
  }
  const key = platformKey();
  if (!PLATFORMS.includes(key)) {
    throw new DorunBinaryError(
      `dorun has no binary for ${key} (there are binaries for ${PLATFORMS.join(", ")}). ` +
        FROM_SOURCE,
    );
  }
  const found = findPackage(key);
  if (found === null) {
    const others = PLATFORMS.filter((other) => other !== key && findPackage(other) !== null);
    if (others.length > 0) {
      throw new DorunBinaryError(
        `dorun's binary for this machine (@dorun/${key}) is not installed, but the one for ` +
          `${others.join(", ")} is: this node_modules was installed on another platform ` +
          "(copied from the host into a container, or the other way round). Run `npm install` " +
          "(or `npm ci`) on this machine instead of copying node_modules; in Docker, add " +
          "node_modules to .dockerignore.",
      );
    }
    throw new DorunBinaryError(
      `dorun's binary for this machine (@dorun/${key}) is not installed. It is an optional ` +
        "dependency of the dorun package: it was left out, by --omit=optional / " +
        "--no-optional (or NODE_ENV / npm config `omit`), or by a package-lock.json written " +
        "on another platform that lacks it. Reinstall without omitting optional dependencies " +
        "(if that does not help: delete node_modules and package-lock.json, then npm install), " +
        `or add @dorun/${key} to your devDependencies at the same version as dorun.`,
    );
  }
  const binary = path.join(found.dir, "bin", "dorun");
  if (!fs.existsSync(binary)) {
    throw new DorunBinaryError(
      `@dorun/${key} is installed at ${found.dir} but holds no bin/dorun: the package is ` +
        "incomplete. Delete node_modules and install again.",
    );
  }
  if (process.platform === "linux") {
    const needed = found.manifest.dorun && found.manifest.dorun.glibc;
    const glibc = glibcVersion();
    if (glibc === null) {
      throw new DorunBinaryError(
        "dorun's Linux binary needs the GNU C library (glibc" +
          (needed ? ` ${needed} or newer` : "") +
          "), and this system has none: it looks like musl (Alpine Linux). Use a glibc-based " +
          "image (e.g. node:22-bookworm-slim instead of node:22-alpine). " +
          FROM_SOURCE,
      );
    }
    if (needed && olderVersion(glibc, needed)) {
      throw new DorunBinaryError(
        `dorun's Linux binary needs glibc ${needed} or newer; this system has glibc ${glibc} ` +
          "(the dynamic linker would refuse it with 'version `GLIBC_...' not found'). Use a " +
          `newer system or image (one with glibc ${needed} or later). ` +
          FROM_SOURCE,
      );
    }
  }
  return binary;
}

/** A message for a binary that was found but could not be started (spawn's error). */
function explainSpawnError(binary, error) {
  const code = error && error.code;
  if (code === "EACCES") {
    return (
      `dorun's binary ${binary} is not executable (${error.message}). Its package was ` +
      "probably unpacked without file modes, or node_modules lives on a noexec mount. Try " +
      `\`chmod +x ${binary}\`, or install again.`
    );
  }
  if (code === "ENOENT" || code === "ENOEXEC") {
    return (
      `dorun's binary ${binary} exists but cannot be run here (${error.message}): it is ` +
      `built for another system than this ${platformKey()}` +
      (process.platform === "linux" ? " (or this Linux lacks glibc's loader: musl?)" : "") +
      ". Delete node_modules and install again on this machine. " +
      FROM_SOURCE
    );
  }
  return `cannot start dorun (${binary}): ${error && error.message}`;
}

module.exports = {
  PLATFORMS,
  DorunBinaryError,
  binaryPath,
  explainSpawnError,
  platformKey,
  glibcVersion,
};
