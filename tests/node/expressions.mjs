// Evaluates GitHub Actions expressions with GitHub's own evaluator (@actions/expressions, from
// actions/languageservices), so that tests/workflows.rs can ask what a workflow's `if:` or value
// gives for an event without running GitHub. Reads JSON from standard input:
//   {"cases": [{"context": {"github": {...}, "vars": {...}}, "expressions": ["a == b", ...]}]}
// and prints {"results": [[value, ...], ...]}: each expression's value as JSON, in order.
// Exits 2 when an expression does not parse or evaluate (with the expression named).
//
//   node tests/node/expressions.mjs < cases.json
import { Evaluator, Lexer, Parser, data } from "@actions/expressions";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { cases } = JSON.parse(input);

const results = [];
for (const { context, expressions } of cases) {
  // The reviver turns plain JSON into the evaluator's typed values.
  const contextData = JSON.parse(JSON.stringify(context), data.reviver);
  const values = [];
  for (const text of expressions) {
    try {
      const lexed = new Lexer(text).lex();
      const expr = new Parser(lexed.tokens, Object.keys(context), []).parse();
      const value = new Evaluator(expr, contextData).evaluate();
      values.push(JSON.parse(JSON.stringify(value, data.replacer)));
    } catch (error) {
      console.error(`cannot evaluate \`${text}\`: ${error.message ?? error}`);
      process.exit(2);
    }
  }
  results.push(values);
}
console.log(JSON.stringify({ results }));
