import { beforeEach, expect, inject, test } from "vitest";
import { connectDorun } from "dorun/test";

const { url, adminUrl } = inject("dorun");
const admin = connectDorun(adminUrl);

beforeEach(async () => {
  await admin.reset();
});

test("increments reach the shared dorun", async () => {
  const response = await fetch(`${url}/counters/shared/increment?by=4`, { method: "POST" });
  expect(await response.json()).toEqual({ count: 4 });
  expect(await admin.get("COUNTERS", "shared", "count")).toBe(4);
});

test("and are gone after the reset", async () => {
  expect(await admin.objects("COUNTERS")).toEqual([]);
});
