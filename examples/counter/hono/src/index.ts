import { Hono, type Context } from "hono";
import type { Counter } from "./counter";

type CloudflareBindings = {
  COUNTER: DurableObjectNamespace<Counter>;
};

const app = new Hono<{ Bindings: CloudflareBindings }>();

function getCounter(c: Context<{ Bindings: CloudflareBindings }>) {
  const id = c.env.COUNTER.idFromName(c.req.param("name"));
  return c.env.COUNTER.get(id);
}

app.get("/:name/value", async (c) => {
  const value = await getCounter(c).getCounterValue();
  return c.json({ value });
});

app.post("/:name/increment", async (c) => {
  const value = await getCounter(c).increment();
  return c.json({ value });
});

app.post("/:name/decrement", async (c) => {
  const value = await getCounter(c).decrement();
  return c.json({ value });
});

export * from "./counter";
export default app;
