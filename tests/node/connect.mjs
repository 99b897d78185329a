// Connects to the database envctl handed out, the way drizzle-kit and Prisma's pg adapter do
// (node-postgres): once from DATABASE_URL, once from the PG* variables alone. Prints one JSON
// line per connection; exits 1 with the driver's error on failure.
import pg from "pg";

const query = "SELECT current_user AS user, current_database() AS database, 1 + 1 AS two";
const results = [];
for (const [how, config] of [
  ["DATABASE_URL", { connectionString: process.env.DATABASE_URL }],
  ["PG*", {}],
]) {
  const client = new pg.Client(config);
  try {
    await client.connect();
    const { rows } = await client.query(query);
    results.push({ how, ...rows[0] });
  } catch (error) {
    console.error(`${how}: ${error.message}`);
    process.exit(1);
  } finally {
    await client.end().catch(() => {});
  }
}
console.log(JSON.stringify(results));
