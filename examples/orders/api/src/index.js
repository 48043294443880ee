// The orders API: HTTP in, a queue to price orders in the background, a cron for a report.

async function readOrder(env, id) {
  return env.ORDERS.get(`order:${id}`, "json");
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method === "POST" && url.pathname === "/orders") {
      const order = await request.json();
      if (typeof order.id !== "string" || !Array.isArray(order.items)) {
        return Response.json({ error: "send {id, items: [{sku, qty}]}" }, { status: 400 });
      }
      await env.ORDERS.put(`order:${order.id}`, JSON.stringify({ ...order, status: "received" }));
      await env.ORDER_QUEUE.send({ id: order.id });
      return Response.json({ id: order.id, status: "received" }, { status: 202 });
    }
    const match = url.pathname.match(/^\/orders\/([^/]+)$/);
    if (match) {
      const order = await readOrder(env, match[1]);
      return order ? Response.json(order) : Response.json({ error: "no such order" }, { status: 404 });
    }
    if (url.pathname === "/report") {
      return Response.json((await env.ORDERS.get("report", "json")) ?? { priced: 0, revenue: 0 });
    }
    return new Response("orders api: POST /orders, GET /orders/:id, GET /report\n");
  },

  // Prices queued orders through the pricing worker.
  async queue(batch, env) {
    for (const message of batch.messages) {
      const order = await readOrder(env, message.body.id);
      if (!order) {
        message.ack();
        continue;
      }
      const quote = await env.PRICING.quote(order.items);
      await env.ORDERS.put(
        `order:${order.id}`,
        JSON.stringify({ ...order, status: "priced", total: quote.total, currency: quote.currency }),
      );
    }
  },

  // Every minute: how many orders are priced, and for how much.
  async scheduled(controller, env) {
    let priced = 0;
    let revenue = 0;
    let cursor;
    do {
      const page = await env.ORDERS.list({ prefix: "order:", cursor });
      for (const key of page.keys) {
        const order = await env.ORDERS.get(key.name, "json");
        if (order?.status === "priced") {
          priced++;
          revenue += order.total;
        }
      }
      cursor = page.list_complete ? undefined : page.cursor;
    } while (cursor);
    await env.ORDERS.put(
      "report",
      JSON.stringify({ priced, revenue, at: new Date(controller.scheduledTime).toISOString() }),
    );
  },
};
