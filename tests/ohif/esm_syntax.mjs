// Module hooks for check_sr.cjs on Node.js 18 (Debian 12's nodejs), where
// cornerstone's ES modules do not link against some of their dependencies
// (Node.js 20.19 and later link them without help):
//  - an ES module in a plain .js file of a package without "type": "module"
//    (dcmjs's "import" entry, build/dcmjs.es.js): Node.js 18 loads it as
//    CommonJS. Newer Node.js tells it by its syntax; so does load() here.
//  - CommonJS whose named exports Node.js 18's export scanner misses (gl-matrix,
//    xmlbuilder2: `import { vec3 } from 'gl-matrix'` fails). load() gives such
//    a module a facade that require()s it (the same instance every require()
//    gets) and exports each of its properties by name, and the whole object as
//    the default export, as Node.js's own interop does.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const identifier = /^[A-Za-z_$][\w$]*$/;

export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context);
  if (result.format !== 'commonjs' || !url.startsWith('file:') || !url.includes('/node_modules/')) return result;
  const path = fileURLToPath(url);
  let names;
  try {
    names = Object.keys(createRequire(url)(path)).filter((n) => identifier.test(n) && n !== 'default');
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    return { ...(await nextLoad(url, { ...context, format: 'module' })), format: 'module', shortCircuit: true };
  }
  const source = [
    "import { createRequire } from 'node:module';",
    `const m = createRequire(import.meta.url)(${JSON.stringify(path)});`,
    'export default m;',
    ...names.map((n) => `export const ${n} = m[${JSON.stringify(n)}];`),
  ].join('\n');
  return { format: 'module', source, shortCircuit: true };
}
