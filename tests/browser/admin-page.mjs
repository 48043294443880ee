// Drives the admin web page in headless Chromium (playwright-core; the browser is the
// system's or the one an npm package carries, see browser.mjs): namespaces, objects, KV entries, SQL with its result table, the alarm view
// and its deletion, evict and reset with their confirmations. Takes a screenshot of each
// view. Run by tests/e2e/admin_page.rs:
//
// The KV namespace, D1 database and R2 bucket views: a value shown, put and deleted, a
// table's rows through the SQL box, an object downloaded and deleted; the Worker reads
// back what the page changed.
//
//   node tests/browser/admin-page.mjs <admin URL> <screenshot dir> <object with KV> <object with alarm> <public URL>
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { chromiumPath } from "./browser.mjs";

const [admin, shots, kvObject, alarmObject, worker] = process.argv.slice(2);
const ns = "admin-Store";

const browser = await chromium.launch({
  executablePath: await chromiumPath(),
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const steps = [];
const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
// CI runs this beside the rest of the suite on two cores: be patient.
page.setDefaultTimeout(60000);
try {
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  const shot = async (name) => {
    await page.screenshot({ path: `${shots}/admin-${name}.png` });
    steps.push(name);
  };

  await page.goto(`${admin}/`);
  const nsRow = page.locator("tr.link", { hasText: ns });
  await nsRow.waitFor();
  assert.match(await nsRow.innerText(), /Store\s+STORE\s+3/);
  await shot("namespaces");

  await nsRow.click();
  await page.waitForURL(/#\/ns\/admin-Store$/);
  // The namespaces table has a `tr.link` row too: wait for the objects view itself.
  await page.locator("h2", { hasText: `Objects of ${ns}` }).waitFor();
  const rows = page.locator("tbody tr.link");
  await rows.first().waitFor();
  assert.equal(await rows.count(), 3);
  assert.equal(await page.locator(".badge.on").count(), 3, "all three are resident");
  await shot("objects");

  await page.locator("tr.link", { hasText: kvObject.slice(0, 16) }).click();
  const kvRow = page.locator("tbody tr", { hasText: "profile" });
  await kvRow.waitFor();
  assert.match(await kvRow.innerText(), /"n": 5/);
  await shot("kv");

  await page.locator(".tabs a", { hasText: "SQL" }).click();
  await page.locator("#sql-query").fill("SELECT key, length(value) AS bytes FROM _cf_KV ORDER BY key");
  await page.locator("#sql-run").click();
  const cell = page.locator("#sql-result td", { hasText: "profile" });
  await cell.waitFor();
  assert.deepEqual(await page.locator("#sql-result th").allInnerTexts(), ["KEY", "BYTES"]);
  await shot("sql");
  await page.locator("#sql-query").fill("SELECT * FROM no_such_table");
  await page.locator("#sql-run").click();
  await page.locator("#sql-result .error", { hasText: "no_such_table" }).waitFor();

  // KV: the namespace's keys, a value, a put from the page, a delete.
  await page.goto(`${admin}/`);
  await page.locator("tr.link", { hasText: "admin-cache" }).click();
  await page.waitForURL(/#\/kv\/admin-cache$/);
  await page.locator("tbody tr", { hasText: "config/theme" }).waitFor();
  const greeting = page.locator("tbody tr", { hasText: "greeting" });
  assert.match(await greeting.innerText(), /"lang":"en"/);
  await greeting.click();
  await page.locator("#kv-value", { hasText: "hello from KV" }).waitFor();
  await page.locator("#kv-key").fill("added/by page");
  await page.locator("#kv-put-value").fill("typed in the page");
  await page.locator("#kv-put").click();
  await page.locator("tbody tr", { hasText: "added/by page" }).waitFor();
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("tbody tr", { hasText: "config/theme" }).locator("button.kv-delete").click();
  await page.locator("tbody tr", { hasText: "config/theme" }).waitFor({ state: "detached" });
  await shot("kv-namespace");

  // D1: the tables with their row counts; a click on one queries it.
  await page.goto(`${admin}/`);
  const dbRow = page.locator("tr.link", { hasText: "admin-db" });
  assert.match(await dbRow.innerText(), /posts \(2\)/);
  await dbRow.click();
  await page.locator("tbody tr.link", { hasText: "posts" }).click();
  await page.locator("#sql-result td", { hasText: "second post" }).waitFor();
  await page.locator("#sql-query").fill("INSERT INTO posts (title) VALUES ('from the page'); SELECT count(*) AS n FROM posts");
  await page.locator("#sql-run").click();
  await page.locator("#sql-result td", { hasText: "3" }).waitFor();
  await shot("d1");

  // R2: the objects, one downloaded, one deleted.
  await page.goto(`${admin}/`);
  await page.locator("tr.link", { hasText: "admin-files" }).click();
  const readme = page.locator("tbody tr", { hasText: "docs/readme.txt" });
  await readme.waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"), readme.locator("button.r2-download").click()]);
  const { readFile } = await import("node:fs/promises");
  assert.equal(await readFile(await download.path(), "utf8"), "an R2 object");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("tbody tr", { hasText: "logo.bin" }).locator("button.r2-delete").click();
  await page.locator("tbody tr", { hasText: "logo.bin" }).waitFor({ state: "detached" });
  await shot("r2");
  const seen = await (await fetch(`${worker}/bindings/read`)).json();
  assert.deepEqual(seen, {
    greeting: "hello from KV", theme: null, added: "typed in the page",
    posts: ["first post", "second post", "from the page"], readme: "an R2 object", files: ["docs/readme.txt"],
  });

  await page.goto(`${admin}/#/ns/${ns}/${alarmObject}/alarm`);
  await page.locator("#alarm", { hasText: "Alarm at" }).waitFor();
  await shot("alarm");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("#alarm-delete").click();
  await page.locator("#alarm", { hasText: "No alarm is set." }).waitFor();

  // Evict: cancelled first (nothing happens), then confirmed.
  await page.goto(`${admin}/#/ns/${ns}`);
  const evictRow = page.locator("tr.link", { hasText: kvObject.slice(0, 16) });
  await evictRow.locator("button.evict").waitFor();
  page.once("dialog", (dialog) => dialog.dismiss());
  await evictRow.locator("button.evict").click();
  await page.waitForTimeout(200);
  assert.equal(await evictRow.locator(".badge.on").count(), 1, "a cancelled evict kept it");
  page.once("dialog", (dialog) => dialog.accept());
  await evictRow.locator("button.evict").click();
  await evictRow.locator(".badge", { hasText: "on disk" }).waitFor();

  // A page of another origin, open in the same browser, tries to wipe everything: a form
  // that posts text/plain and fetches in no-cors mode, none of which the browser checks
  // with the server first. The admin listener refuses each, so the objects stay.
  const attacker = createServer((request, response) => {
    response.setHeader("content-type", "text/html");
    response.end(`<form id="form" method="POST" action="${admin}/api/reset" enctype="text/plain"
        target="sink"><input name="{}" value=""></form><iframe name="sink"></iframe>
      <script>
        (async () => {
          const tries = [
            fetch("${admin}/api/reset", { method: "POST", mode: "no-cors" }),
            fetch("${admin}/api/reset", { method: "POST", mode: "no-cors",
              headers: { "content-type": "text/plain" }, body: "{}" }),
            fetch("${admin}/api/objects/${ns}/${kvObject}/sql", { method: "POST", mode: "no-cors",
              body: JSON.stringify({ query: "DELETE FROM _cf_KV" }) }),
          ];
          await Promise.allSettled(tries);
          document.querySelector("iframe").onload = () => document.body.append(
            Object.assign(document.createElement("p"), { id: "done" }));
          document.getElementById("form").submit();
        })();
      </script>`);
  });
  await new Promise((resolve) => attacker.listen(0, "127.0.0.1", resolve));
  const evil = await browser.newPage();
  try {
    await evil.goto(`http://127.0.0.1:${attacker.address().port}/`);
    await evil.locator("#done").waitFor({ state: "attached" });
  } finally {
    await evil.close();
    attacker.close();
  }
  await page.reload();
  await page.locator("tr.link", { hasText: kvObject.slice(0, 16) }).waitFor();
  assert.equal(await page.locator("tbody tr.link").count(), 3, "another site's page reset nothing");
  await page.goto(`${admin}/#/ns/${ns}/${kvObject}`);
  await page.locator("tbody tr", { hasText: "profile" }).waitFor();
  await page.goto(`${admin}/#/ns/${ns}`);
  await page.locator("tr.link", { hasText: kvObject.slice(0, 16) }).waitFor();

  // Reset: cancelled, then confirmed.
  page.once("dialog", (dialog) => dialog.dismiss());
  await page.locator("#reset").click();
  await page.waitForTimeout(200);
  assert.equal(await page.locator("tbody tr.link").count(), 3, "a cancelled reset kept the objects");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("#reset").click();
  await page.locator("#reset-result", { hasText: "Reset: 3 objects" }).waitFor();
  assert.match(await page.locator("tr.link", { hasText: ns }).innerText(), /Store\s+STORE\s+0/);
  await shot("reset");
  const afterReset = await (await fetch(`${worker}/bindings/read`)).json();
  assert.deepEqual(afterReset, {
    greeting: null, theme: null, added: null, posts: [], readme: null, files: [],
  });

  assert.deepEqual(errors, []);
  console.log(JSON.stringify({ ok: true, steps, browser: browser.version() }));
} catch (error) {
  await page.screenshot({ path: `${shots}/failure.png` });
  console.error(`failed after ${steps.join(", ")}:`, await page.locator("main").innerText());
  throw error;
} finally {
  await browser.close();
}
