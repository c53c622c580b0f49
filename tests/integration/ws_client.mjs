// ws_client.mjs - a websocket client of /v1/events (npm ws 8).
// usage: node ws_client.mjs BASE_URL follow QUESTION N
//   subscribes to every job, creates one job over REST, and collects its
//   events until job.done/job.failed; prints a JSON summary.
// usage: node ws_client.mjs BASE_URL origin ORIGIN
//   tries the upgrade with that Origin header; prints {"opened": bool, "status": N}.
import WebSocket from 'ws';

const [base, mode, arg1, arg2] = process.argv.slice(2);
const wsurl = base.replace(/^http/, 'ws') + '/v1/events';
const headers = process.env.BRAID_API_KEY ? { Authorization: 'Bearer ' + process.env.BRAID_API_KEY } : {};
const out = (o) => { console.log(JSON.stringify(o)); process.exit(0); };
setTimeout(() => out({ error: 'timeout' }), 120000).unref();

if (mode === 'origin') {
  const ws = new WebSocket(wsurl, { headers: { ...headers, Origin: arg1 } });
  ws.on('open', () => { ws.close(); out({ opened: true, status: 101 }); });
  ws.on('unexpected-response', (req, res) => out({ opened: false, status: res.statusCode }));
  ws.on('error', (e) => out({ opened: false, status: null, error: String(e) }));
} else if (mode === 'follow') {
  const ws = new WebSocket(wsurl, { headers });
  const events = [];
  let job = null;
  const early = [];
  ws.on('message', (m) => {
    const e = JSON.parse(m.toString());
    if (!job) { early.push(e); return; }
    if (e.job !== job) return;
    events.push(e);
    if (e.type === 'job.done' || e.type === 'job.failed') finish();
  });
  ws.on('error', (e) => out({ error: String(e) }));
  ws.on('open', async () => {
    const r = await fetch(base + '/v1/jobs', { method: 'POST', headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ question: arg1, strategy: 'sc', n: Number(arg2), max_tokens: 16 }) });
    const j = await r.json();
    job = j.id;
    for (const e of early) if (e.job === job) events.push(e);
    early.length = 0;
    if (events.some((e) => e.type === 'job.done' || e.type === 'job.failed')) finish();
  });
  function finish() {
    const seqs = events.map((e) => e.seq);
    const consecutive = seqs.every((s, i) => s === i);
    const types = [...new Set(events.map((e) => e.type))];
    const spawned = events.filter((e) => e.type === 'thread.spawned').length;
    const done = events.filter((e) => e.type === 'thread.done').length;
    const allHave = events.every((e) => typeof e.ts === 'number' && e.job === job);
    ws.close();
    out({ job, n: events.length, first: events[0] && events[0].type, last: events.at(-1) && events.at(-1).type,
      consecutive, types, spawned, done, allHave });
  }
} else {
  out({ error: 'unknown mode' });
}
