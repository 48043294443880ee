// globalSetup: one dorun for the whole vitest run, started before any test file and stopped
// after the last; the test files reach it through inject("dorun").
import { startDorun } from "dorun/test";

export default async function setup(project) {
  const dorun = await startDorun({ config: "wrangler.toml" });
  project.provide("dorun", { url: dorun.url, adminUrl: dorun.adminUrl });
  return async () => {
    await dorun.stop();
  };
}
