// The reference GraphQL implementation (graphql-js) looks at tenantflow's API as a
// dashboard toolchain does (GraphiQL, code generators, Apollo, Relay all build on it).
//
//   node check.mjs introspection-query
//       prints the standard introspection query, with every option a tool may turn on
//   node check.mjs client-schema <answer.json> <operations.json>
//       rebuilds a client schema from an introspection answer, validates each operation
//       ([{ "name", "document" }]) against it and types it: prints a JSON report
//   node check.mjs subscribe <ws url> <token> <query> <variables json> <count>
//       subscribes with the reference graphql-transport-ws client (graphql-ws) and prints
//       the first <count> results as a JSON list; a refused connection prints
//       {"closed": <code>}
import { readFileSync } from "node:fs";
import {
  buildClientSchema,
  getIntrospectionQuery,
  getNamedType,
  isNonNullType,
  parse,
  printSchema,
  TypeInfo,
  typeFromAST,
  validate,
  visit,
  visitWithTypeInfo,
} from "graphql";

const [command, ...args] = process.argv.slice(2);

if (command === "introspection-query") {
  process.stdout.write(
    getIntrospectionQuery({
      descriptions: true,
      specifiedByUrl: true,
      directiveIsRepeatable: true,
      schemaDescription: true,
      inputValueDeprecation: true,
    }),
  );
} else if (command === "client-schema") {
  const answer = JSON.parse(readFileSync(args[0], "utf8"));
  const operations = JSON.parse(readFileSync(args[1], "utf8"));
  const schema = buildClientSchema(answer.data);
  const report = {
    types: Object.keys(schema.getTypeMap()).filter((t) => !t.startsWith("__")),
    sdl: printSchema(schema),
    operations: operations.map(({ name, document }) => typed(schema, name, document)),
  };
  process.stdout.write(JSON.stringify(report));
} else if (command === "subscribe") {
  const [url, token, query, variables, count] = args;
  const { createClient } = await import("graphql-ws");
  const { default: WebSocket } = await import("ws");
  const results = [];
  const client = createClient({
    url,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 0,
    lazy: true,
  });
  const done = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ timeout: true, results }), 20000);
    client.subscribe(
      { query, variables: JSON.parse(variables) },
      {
        next: (value) => {
          results.push(value);
          if (results.length >= Number(count)) {
            clearTimeout(timer);
            resolve(results);
          }
        },
        error: (err) => {
          clearTimeout(timer);
          resolve({ closed: err?.code ?? null, reason: err?.reason ?? String(err) });
        },
        complete: () => {
          clearTimeout(timer);
          resolve(results);
        },
      },
    );
  });
  await client.dispose();
  process.stdout.write(JSON.stringify(done));
} else {
  process.stderr.write(`unknown command ${command}\n`);
  process.exit(2);
}

// An operation's validation errors and its types, as a code generator derives them: each
// variable's type and each selected field's path with its type.
function typed(schema, name, document) {
  let ast;
  try {
    ast = parse(document);
  } catch (e) {
    return { name, errors: [e.message] };
  }
  const errors = validate(schema, ast).map((e) => e.message);
  const variables = {};
  const fields = {};
  const typeInfo = new TypeInfo(schema);
  const path = [];
  visit(
    ast,
    visitWithTypeInfo(typeInfo, {
      VariableDefinition(node) {
        const type = typeFromAST(schema, node.type);
        variables[node.variable.name.value] = type ? String(type) : null;
      },
      Field: {
        enter(node) {
          path.push(node.alias?.value ?? node.name.value);
          const type = typeInfo.getType();
          fields[path.join(".")] = type
            ? { type: String(type), named: getNamedType(type).name, nonNull: isNonNullType(type) }
            : null;
        },
        leave() {
          path.pop();
        },
      },
    }),
  );
  return { name, errors, variables, fields };
}
