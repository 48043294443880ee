// One dorun per test file: test/vitest/setup-dorun.mjs runs before each file (setupFiles)
// and starts its own dorun, so files run in parallel without sharing any state.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/vitest/**/*.test.mjs"],
    setupFiles: ["test/vitest/setup-dorun.mjs"],
  },
});
