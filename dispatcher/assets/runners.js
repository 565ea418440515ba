// Warren dashboard: runners and the queue (`/runners`).
//
// Runners report through heartbeats, not through /api/events, so this page
// polls /api/runners and /api/queue every few seconds, and sooner when a
// job changes.
'use strict';

(function () {
  const W = window.Warren;
  const { el } = W;
  const POLL_MS = 3000;

  const tbody = document.getElementById('runner-rows');
  let runners = [];

  function row(runner) {
    const state = runner.online ? 'online' : 'offline';
    const current = runner.current_job
      ? el('a', { href: W.jobUrl(runner.current_job), title: runner.current_job }, runner.current_job)
      : el('span', { className: 'muted' }, 'idle');
    return el('tr', { className: 'runner ' + state, 'data-runner': runner.id, 'data-online': String(runner.online) },
      el('td', {}, el('span', { className: 'presence presence-' + state }, el('span', { className: 'dot' }), state)),
      el('td', { className: 'runner-id' }, runner.id),
      el('td', {}, runner.host),
      el('td', { className: 'sandbox' }, runner.sandbox === 'none'
        ? el('span', { className: 'warning', title: 'its jobs run without isolation' }, 'none')
        : runner.sandbox),
      el('td', { className: 'current' }, current),
      el('td', { className: 'seen', title: runner.last_seen || '' }, W.ago(runner.last_seen_ms)),
      el('td', { className: 'num' }, String(runner.jobs_done)));
  }

  function renderRunners(list) {
    runners = list;
    // Online first, then by id.
    list.sort((a, b) => (b.online - a.online) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    tbody.replaceChildren(...list.map(row));
    document.getElementById('empty').hidden = list.length > 0;
  }

  function renderQueue(q) {
    document.getElementById('queue-depth').textContent = String(q.depth);
    document.getElementById('queue-name').textContent = q.queue;
    document.getElementById('queue-consumers').textContent = String(q.consumers);
    const dead = document.getElementById('dead-letters');
    dead.textContent = String(q.dead_letters);
    dead.classList.toggle('bad', q.dead_letters > 0);
    document.getElementById('dead-letter-queue').textContent = q.dead_letter_queue;
    const link = document.getElementById('management-ui');
    link.hidden = !q.management_ui;
    if (q.management_ui) {
      link.setAttribute('href', W.safeHref(q.management_ui));
      link.setAttribute('title', q.management_ui);
    }
    document.getElementById('queue-note').textContent = 'connected';
  }

  function queueUnavailable(message) {
    for (const id of ['queue-depth', 'queue-consumers', 'dead-letters']) {
      document.getElementById(id).textContent = '–';
    }
    document.getElementById('queue-note').textContent = message;
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    const [list, queue] = await Promise.allSettled([W.getJSON('/api/runners'), W.getJSON('/api/queue')]);
    if (list.status === 'fulfilled') {
      renderRunners(list.value);
      W.showError('');
    } else {
      W.showError('Cannot load runners from the dispatcher (' + list.reason.message + '). Retrying…');
    }
    if (queue.status === 'fulfilled') renderQueue(queue.value);
    else queueUnavailable(queue.reason.status === 503 ? 'the dispatcher is not connected to the broker' : 'unavailable');
    timer = setTimeout(refresh, POLL_MS);
  }

  // "3 s ago" keeps counting between polls.
  W.everySecond(() => {
    for (const runner of runners) {
      const tr = tbody.querySelector('tr[data-runner="' + CSS.escape(runner.id) + '"]');
      if (tr) tr.querySelector('.seen').textContent = W.ago(runner.last_seen_ms);
    }
  });

  let soon = null;
  W.live(() => {
    clearTimeout(soon);
    soon = setTimeout(refresh, 300);
  }, refresh);
  refresh();
})();
