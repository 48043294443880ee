// The app's own integration tests, run against dorun instead of Cloudflare. Every test
// starts from empty storage: the suite resets dorun between tests through its admin API.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { startDorun } from "./dorun.mjs";

let server;

before(async () => {
  server = await startDorun();
});

beforeEach(async () => {
  await server.reset();
});

after(async () => {
  const code = await server.stop();
  assert.equal(code, 0, "dorun exits cleanly on SIGTERM");
});

async function add(list, text) {
  const response = await fetch(`${server.url}/lists/${list}/items`, {
    method: "POST",
    body: JSON.stringify({ text }),
  });
  assert.equal(response.status, 201);
  return (await response.json()).id;
}

async function get(list) {
  const response = await fetch(`${server.url}/lists/${list}`);
  assert.equal(response.status, 200);
  return await response.json();
}

test("items are added and completed", async () => {
  const milk = await add("home", "milk");
  await add("home", "bread");
  const done = await fetch(`${server.url}/lists/home/items/${milk}`, { method: "POST" });
  assert.equal(done.status, 204);
  const { items } = await get("home");
  assert.deepEqual(items, [
    { id: 1, text: "milk", done: true },
    { id: 2, text: "bread", done: false },
  ]);
});

test("each test starts from empty storage", async () => {
  // The previous test's list is gone: ids start at 1 again.
  assert.deepEqual((await get("home")).items, []);
  assert.equal(await add("home", "eggs"), 1);
});

test("a reminder alarm fires", async () => {
  const response = await fetch(`${server.url}/lists/work/remind?in=100`, { method: "POST" });
  assert.equal(response.status, 202);
  let reminded = false;
  for (let i = 0; i < 100 && !reminded; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    reminded = (await get("work")).reminded;
  }
  assert.equal(reminded, true);
});

test("a pending alarm does not survive a reset", async () => {
  await fetch(`${server.url}/lists/later/remind?in=300`, { method: "POST" });
  await server.reset();
  await new Promise((resolve) => setTimeout(resolve, 600));
  assert.equal((await get("later")).reminded, false);
});
