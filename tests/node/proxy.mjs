// node-postgres through `envctl exec --proxy` (DATABASE_URL points at the proxy, no password):
// a query, a named prepared statement run twice, LISTEN/NOTIFY between two connections, and a
// 64 MiB result. Prints one JSON line; exits 1 with the driver's error on failure.
import pg from "pg";

const fail = (error) => {
  console.error(error.stack || String(error));
  process.exit(1);
};

try {
  const url = process.env.DATABASE_URL;
  const listener = new pg.Client({ connectionString: url });
  const talker = new pg.Client({ connectionString: url });
  await listener.connect();
  await talker.connect();

  const who = (await talker.query("SELECT current_user AS user, current_database() AS database")).rows[0];

  const doubled = [];
  for (const n of [21, 50]) {
    const { rows } = await talker.query({ name: "double", text: "SELECT $1::int * 2 AS v", values: [n] });
    doubled.push(rows[0].v);
  }

  const heard = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no notification within 10 s")), 10000);
    listener.on("notification", (message) => {
      clearTimeout(timer);
      resolve({ channel: message.channel, payload: message.payload });
    });
  });
  await listener.query("LISTEN envctl_proxy");
  await talker.query("SELECT pg_notify('envctl_proxy', 'through the proxy')");
  const notification = await heard;

  const big = await talker.query("SELECT repeat('x', 1048576) AS r FROM generate_series(1, 64)");
  const bigBytes = big.rows.reduce((sum, row) => sum + row.r.length, 0);

  await listener.end();
  await talker.end();
  console.log(
    JSON.stringify({
      ...who,
      doubled,
      notification,
      bigBytes,
      password: process.env.PGPASSWORD ?? null,
      url,
    }),
  );
} catch (error) {
  fail(error);
}
