// Starts `dorun serve` for a test suite and stops it afterwards: the recipe to copy.
//
//   const server = await startDorun();      // dorun serve --port 0 --ephemeral --admin-port 0
//   await fetch(`${server.url}/...`);       // the app, as on Cloudflare
//   await server.reset();                   // every object, alarm and socket gone
//   await server.stop();                    // SIGTERM; the ephemeral state is removed
//
// The dorun binary: $DORUN, else `dorun` on the PATH.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

export async function startDorun({ args = [], timeoutMs = 30_000 } = {}) {
  const child = spawn(
    process.env.DORUN ?? "dorun",
    ["serve", root, "--port", "0", "--ephemeral", "--admin-port", "0", ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let logs = "";
  child.stderr.on("data", (chunk) => {
    logs += chunk;
  });
  // dorun prints one parseable line per listener on stdout.
  const addresses = await new Promise((resolve, reject) => {
    const found = {};
    const timer = setTimeout(() => reject(new Error(`dorun did not start:\n${logs}`)), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`dorun exited with ${code}:\n${logs}`));
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      const admin = line.match(/^dorun: admin on (\S+)$/);
      const listening = line.match(/^dorun: listening on (\S+)$/);
      if (admin) found.admin = admin[1];
      if (listening) found.url = listening[1];
      if (found.admin && found.url) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve(found);
      }
    });
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return {
    ...addresses,
    logs: () => logs,
    /** Every Durable Object, alarm and WebSocket gone (the admin listener's reset). */
    async reset() {
      const response = await fetch(`${addresses.admin}/api/reset`, {
        method: "POST",
        // The admin listener takes state changes only with a header no web page can send.
        headers: { "content-type": "application/json" },
      });
      if (!response.ok) throw new Error(`reset failed: ${response.status}`);
      return await response.json();
    },
    /** Stops dorun (SIGTERM: in-flight requests drain, storage is committed). */
    async stop() {
      child.kill("SIGTERM");
      return await exited;
    },
  };
}
