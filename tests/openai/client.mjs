// A real client of `nvlm serve` for tests/test_serve_openai.c: the official `openai` npm
// package (installed by tests/openai/install.sh) runs the jobs of a JSON file and prints one
// JSON line per job with what the SDK handed back.
//
//   node client.mjs NODE_PREFIX BASE_URL API_KEY JOBS.json
//
// A job is {"name", "op": "chat" | "models", "params": {...create() params...}, "key"?}.
// Its line: {"name", "ok", "content", "finish_reason", "usage", "chunks", "ids", "status",
// "code", "error"}; streamed answers are the concatenated deltas.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [prefix, baseURL, apiKey, jobsPath] = process.argv.slice(2);
const require = createRequire(join(prefix, 'noop.js')); // resolves prefix/node_modules
const { OpenAI } = require('openai');
const VERSION = JSON.parse(readFileSync(join(prefix, 'node_modules/openai/package.json'), 'utf8')).version;

function client(key) {
  // No retries: a failure must show, not be papered over.
  return new OpenAI({ apiKey: key, baseURL, maxRetries: 0, timeout: 300000 });
}

async function chat(c, params) {
  if (!params.stream) {
    const r = await c.chat.completions.create(params);
    const ch = r.choices[0];
    return { content: ch.message.content, finish_reason: ch.finish_reason, usage: r.usage, role: ch.message.role,
             object: r.object, model: r.model };
  }
  const stream = await c.chat.completions.create(params);
  let content = '', finish = null, usage = null, chunks = 0, role = null;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    const ch = chunk.choices[0];
    if (!ch) continue;
    if (ch.delta.role) role = ch.delta.role;
    if (ch.delta.content) content += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { content, finish_reason: finish, usage, chunks, role };
}

async function run(job) {
  const c = client(job.key ?? apiKey);
  try {
    if (job.op === 'models') {
      const ids = [];
      for await (const m of c.models.list()) ids.push(m.id);
      return { name: job.name, ok: true, ids };
    }
    return { name: job.name, ok: true, ...(await chat(c, job.params)) };
  } catch (e) {
    return { name: job.name, ok: false, status: e.status ?? null, code: e.code ?? null,
             error: String(e.message ?? e) };
  }
}

const jobs = JSON.parse(readFileSync(jobsPath, 'utf8'));
process.stderr.write(`openai ${VERSION}, node ${process.version}\n`);
// The jobs run concurrently, like the independent clients they stand for.
const results = await Promise.all(jobs.map(run));
for (const r of results) process.stdout.write(JSON.stringify(r) + '\n');
