import { Hono } from "hono";

type Bindings = {
  APP_NAME: string;
};

const app = new Hono<{ Bindings: Bindings }>();

app.get("/", (c) => c.text(`${c.env.APP_NAME}\n`));

app.get("/hello/:name", (c) => {
  const name: string = c.req.param("name");
  return c.json({ hello: name, app: c.env.APP_NAME });
});

app.post("/sum", async (c) => {
  const numbers = (await c.req.json()) as number[];
  return c.json({ sum: numbers.reduce((a, b) => a + b, 0) });
});

export default app;
