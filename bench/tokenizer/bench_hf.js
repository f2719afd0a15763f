// bench_hf.js - Hugging Face tokenizers (npm @anush008/tokenizers, native Rust) on the same
// texts as bench_tok.c: load time and encode throughput, one encode at a time.
// usage: NODE_PATH=.../node_modules node bench_hf.js TOKENIZER_DIR TEXT_DIR
'use strict';
const fs = require('fs');
const path = require('path');
const tk = require('@anush008/tokenizers');

async function main() {
  const [dir, texts] = process.argv.slice(2);
  let best = 1e9, t = null;
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    t = tk.Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    const dt = Number(process.hrtime.bigint() - t0) / 1e6;
    if (dt < best) best = dt;
  }
  console.log(`load ${best.toFixed(1)} ms (best of 5)`);
  for (const name of ['prose', 'code', 'cjk', 'doc1mb']) {
    const items = fs.readFileSync(path.join(texts, name + '.txt'), 'utf8').split('\x1e');
    const sizes = items.map((s) => Buffer.byteLength(s, 'utf8'));
    let bytes = 0, rounds = 0, ids = 0;
    const t0 = process.hrtime.bigint();
    let dt = 0;
    do {
      ids = 0;
      for (let i = 0; i < items.length; i++) {
        const e = await t.encode(items[i], null, { addSpecialTokens: true });
        ids += e.getIds().length;
        bytes += sizes[i];
      }
      rounds++;
      dt = Number(process.hrtime.bigint() - t0) / 1e9;
    } while (dt < 2.0);
    console.log(`${name} ${(bytes / dt / 1e6).toFixed(2)} MB/s (${ids} ids per round, ${rounds} rounds)`);
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
