// openai_client.mjs - braid's OpenAI-compatible API through the official
// openai SDK (6.x).  usage: node openai_client.mjs BASE_URL MODE MODEL
// MODE: plain | stream | n3.  Prints one JSON summary line for serve.sh.
import OpenAI from 'openai';

const [base, mode, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + '/v1', apiKey: process.env.BRAID_API_KEY || 'none', maxRetries: 0, timeout: 120000 });
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'What is 2+3?' }];

try {
  if (mode === 'plain' || mode === 'n3') {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0.7, seed: 1, ...(mode === 'n3' ? { n: 3 } : {}) });
    console.log(JSON.stringify({
      object: r.object, id: r.id, model: r.model, n_choices: r.choices.length,
      indexes: r.choices.map((c) => c.index), roles: r.choices.map((c) => c.message.role),
      contents_are_strings: r.choices.every((c) => typeof c.message.content === 'string'),
      finish: r.choices.map((c) => c.finish_reason), usage: r.usage, braid: r.braid,
    }));
  } else if (mode === 'stream') {
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 12, stream: true, stream_options: { include_usage: true } });
    const text = {}, finish = {};
    let chunks = 0, usage = null, object = null, after_usage = 0;
    for await (const ch of stream) {
      chunks++;
      object = ch.object;
      if (usage) after_usage++;
      if (ch.usage) usage = ch.usage;
      for (const c of ch.choices) {
        if (c.delta && typeof c.delta.content === 'string') text[c.index] = (text[c.index] || '') + c.delta.content;
        if (c.finish_reason) finish[c.index] = c.finish_reason;
      }
    }
    console.log(JSON.stringify({ object, chunks, text, finish, usage, after_usage }));
  } else {
    throw new Error('unknown mode ' + mode);
  }
} catch (e) {
  console.log(JSON.stringify({ error: String(e), status: e.status ?? null }));
  process.exit(1);
}
