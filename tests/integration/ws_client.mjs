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
} else if (mode === 'slow') {
  // A client that stops reading: subscribe, pause the socket, run a job over
  // REST to completion (the engine must not wait for us), then read again and
  // report what arrived (a gap where events were dropped, then the rest).
  const ws = new WebSocket(wsurl, { headers });
  const events = [];
  let job = null, doneWhilePaused = false;
  ws.on('message', (m) => {
    const e = JSON.parse(m.toString());
    events.push(e);
    if (job && e.job === job && (e.type === 'job.done' || e.type === 'job.failed')) finish();
  });
  ws.on('error', (e) => out({ error: String(e) }));
  ws.on('open', async () => {
    ws._socket.pause();
    const r = await fetch(base + '/v1/jobs', { method: 'POST', headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ question: arg1, strategy: 'sc', n: Number(arg2), max_tokens: 200 }) });
    job = (await r.json()).id;
    for (let i = 0; i < 600; i++) {
      const st = (await (await fetch(base + '/v1/jobs/' + job, { headers })).json()).status;
      if (st === 'done' || st === 'failed') { doneWhilePaused = st === 'done'; break; }
      await new Promise((res) => setTimeout(res, 100));
    }
    ws._socket.resume();
    setTimeout(finish, 3000);
  });
  let finishing = false;
  async function finish() {
    if (finishing) return;
    finishing = true;
    const gaps = events.filter((e) => e.type === 'gap');
    const mine = events.filter((e) => e.job === job && e.type !== 'gap');
    ws.close();
    // what a client does after a gap: re-read the job's state
    const state = await (await fetch(base + '/v1/jobs/' + job, { headers })).json();
    out({ job, doneWhilePaused, received: events.length, gaps: gaps.length,
      dropped: gaps.reduce((a, g) => a + (g.dropped || 0), 0),
      gapNamesJob: gaps.some((g) => g.job === job || (g.jobs || []).includes(job)),
      lastType: mine.length ? mine.at(-1).type : null, stateAfter: state.status,
      threadsAfter: (state.threads || []).length });
  }
} else {
  out({ error: 'unknown mode' });
}
