// app.js - the small braid page: lists jobs (GET /v1/jobs) and shows one
// job's threads growing live from the websocket /v1/events?job=ID.
'use strict';
const $ = (id) => document.getElementById(id);
let ws = null, current = null;

function esc(s) { const d = document.createElement('div'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }

async function listJobs() {
  try {
    const r = await fetch('/v1/jobs?limit=100');
    const j = await r.json();
    const ul = $('jobs');
    ul.innerHTML = '';
    for (const job of j.jobs || []) {
      const li = document.createElement('li');
      const q = (job.request && (job.request.question ||
        (job.request.messages && job.request.messages.at(-1).content))) || job.id;
      li.innerHTML = `<span class="status ${esc(job.status)}">${esc(job.status)}</span> ${esc(q).slice(0, 80)}`;
      if (job.id === current) li.className = 'sel';
      li.onclick = () => openJob(job.id);
      ul.appendChild(li);
    }
  } catch (e) { $('conn').textContent = 'offline'; }
}

function threadBox(i) {
  let box = document.getElementById('t' + i);
  if (!box) {
    box = document.createElement('div');
    box.className = 'thread';
    box.id = 't' + i;
    box.innerHTML = `<b>thread ${i}</b> <span class="meta"></span><pre></pre>`;
    $('threads').appendChild(box);
  }
  return box;
}

function onEvent(e) {
  if (e.job !== current) return;
  switch (e.type) {
  case 'thread.spawned': threadBox(e.thread).querySelector('.meta').textContent =
    e.parent >= 0 ? `forked from ${e.parent} at ${e.at_token}` : ''; break;
  case 'thread.delta': threadBox(e.thread).querySelector('pre').textContent += e.text; break;
  case 'thread.pruned': threadBox(e.thread).classList.add('pruned');
    threadBox(e.thread).querySelector('.meta').textContent = 'pruned: ' + e.reason; break;
  case 'thread.done': { const b = threadBox(e.thread); b.classList.add('done');
    b.querySelector('pre').textContent = e.text;
    b.querySelector('.meta').textContent = `${e.finish_reason}, ${e.tokens} tokens, answer ${e.answer}`; break; }
  case 'job.done': $('job-answer').innerHTML = `answer <b>${esc(e.answer)}</b> votes ${esc(JSON.stringify(e.votes))}`; listJobs(); break;
  case 'job.failed': $('job-answer').textContent = 'failed: ' + e.reason; listJobs(); break;
  case 'gap': openJob(current); break;   // dropped events: reload the job
  }
}

function openJob(id) {
  current = id;
  $('job-title').textContent = id;
  $('job-answer').textContent = '';
  $('threads').innerHTML = '';
  if (ws) ws.close();
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${proto}//${location.host}/v1/events?job=${encodeURIComponent(id)}`);
  ws.onopen = () => { $('conn').textContent = 'live'; };
  ws.onclose = () => { $('conn').textContent = 'closed'; };
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  listJobs();
}

$('ask').onsubmit = async (ev) => {
  ev.preventDefault();
  const body = { question: $('question').value, strategy: $('strategy').value, n: Number($('n').value) };
  const r = await fetch('/v1/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const j = await r.json();
  if (r.status === 202) openJob(j.id); else alert(j.error ? j.error.message : r.status);
};

listJobs();
setInterval(listJobs, 5000);
