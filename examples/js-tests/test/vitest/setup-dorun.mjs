// setupFiles: runs in each test file's context before its tests, so every file gets a dorun
// of its own (free ports, ephemeral state), reset before each test and stopped after the file.
import { afterAll, beforeAll, beforeEach } from "vitest";
import { startDorun } from "dorun/test";

/** This file's dorun (set before its first test). */
export let dorun;

beforeAll(async () => {
  dorun = await startDorun({ config: "wrangler.toml" });
});

beforeEach(async () => {
  await dorun.reset();
});

afterAll(async () => {
  await dorun?.stop();
});
