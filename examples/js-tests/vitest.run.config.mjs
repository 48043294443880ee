// One dorun for the whole run: test/vitest-run/global-setup.mjs starts it once and hands its
// addresses to the test files (provide/inject). The files share its state, so they run one
// at a time, each resetting before its tests.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/vitest-run/**/*.test.mjs"],
    globalSetup: ["test/vitest-run/global-setup.mjs"],
    fileParallelism: false,
  },
});
