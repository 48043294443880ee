import { expect, test } from "vitest";
import { dorun } from "./setup-dorun.mjs";

test("an alarm an hour away runs now through the admin listener", async () => {
  await dorun.fetch("/counters/c/increment?by=5", { method: "POST" });
  await dorun.fetch("/counters/c/expire?in=3600000", { method: "POST" });
  const alarm = await dorun.admin.alarm("COUNTERS", "c");
  expect(alarm).toBeGreaterThan(Date.now() + 3_000_000);
  const run = await dorun.admin.runAlarm("COUNTERS", "c");
  expect(run).toMatchObject({ ran: true, outcome: "done", scheduled: alarm });
  expect(await (await dorun.fetch("/counters/c")).json()).toEqual({ count: 0, expired: true });
  expect(await dorun.admin.alarm("COUNTERS", "c")).toBe(null);
});

test("a reset forgets pending alarms", async () => {
  await dorun.fetch("/counters/d/expire?in=3600000", { method: "POST" });
  const counts = await dorun.reset();
  expect(counts.alarms).toBe(1);
  expect(await dorun.admin.runAlarm("COUNTERS", "d")).toMatchObject({ ran: false });
});
