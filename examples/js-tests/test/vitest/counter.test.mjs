import { expect, test } from "vitest";
import { dorun } from "./setup-dorun.mjs";

async function increment(name, by = 1) {
  const response = await dorun.fetch(`/counters/${name}/increment?by=${by}`, { method: "POST" });
  expect(response.status).toBe(200);
  return (await response.json()).count;
}

test("increments are counted and stored", async () => {
  expect(await increment("a")).toBe(1);
  expect(await increment("a", 2)).toBe(3);
  // What the object stored, read through the admin listener.
  expect(await dorun.admin.get("COUNTERS", "a", "count")).toBe(3);
  const { rows } = await dorun.admin.sql("COUNTERS", "a", "SELECT sum(by) FROM increments");
  expect(rows).toEqual([[3]]);
});

test("each test starts from empty storage", async () => {
  expect(await dorun.admin.objects("COUNTERS")).toEqual([]);
  expect(await increment("a")).toBe(1);
});

test("objects are listed by id; evicted ones keep their storage", async () => {
  await increment("a");
  await increment("b");
  const objects = await dorun.admin.objects("COUNTERS");
  const a = await dorun.admin.idFromName("COUNTERS", "a");
  expect(objects.map((o) => o.id)).toContain(a);
  expect(objects).toHaveLength(2);
  expect((await dorun.admin.evict("COUNTERS", "a")).evicted).toBe(true);
  expect((await dorun.admin.object("COUNTERS", { id: a })).resident).toBe(false);
  expect(await increment("a")).toBe(2);
});

test("one namespace can be reset alone", async () => {
  await increment("a", 3);
  const counts = await dorun.reset("COUNTERS");
  expect(counts).toMatchObject({ namespace: "counters-Counter", objects: 1 });
  expect(await increment("a")).toBe(1);
});
