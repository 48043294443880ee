// The same kind of tests with Node's own runner: node --test test/node/
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";
import { startDorun } from "dorun/test";

let dorun;

before(async () => {
  dorun = await startDorun({ config: "wrangler.toml" });
});

beforeEach(async () => {
  await dorun.reset();
});

after(async () => {
  assert.equal(await dorun.stop(), 0, "dorun exits cleanly on SIGTERM");
});

test("increments are counted", async () => {
  const response = await dorun.fetch("/counters/n/increment?by=2", { method: "POST" });
  assert.deepEqual(await response.json(), { count: 2 });
  assert.equal(await dorun.admin.get("COUNTERS", "n", "count"), 2);
});

test("each test starts from empty storage", async () => {
  assert.deepEqual(await (await dorun.fetch("/counters/n")).json(), { count: 0, expired: false });
});

test("an alarm runs on demand", async () => {
  await dorun.fetch("/counters/n/expire?in=3600000", { method: "POST" });
  const run = await dorun.admin.runAlarm("COUNTERS", "n");
  assert.equal(run.outcome, "done");
  assert.equal((await (await dorun.fetch("/counters/n")).json()).expired, true);
});
