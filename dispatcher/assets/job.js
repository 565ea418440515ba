// Warren dashboard: one job (`/jobs/{id or commit}`): every field, the log
// with line numbers and ANSI colours, and a rerun button.
//
// Rerun POSTs to /api/jobs/{id}/rerun. When the dispatcher has an API
// token (WARREN_API_TOKEN), the first rerun asks for it once and keeps it
// in this browser's localStorage ("warren.apiToken"); a rejected token is
// asked for again.
'use strict';

(function () {
  const W = window.Warren;
  const { el } = W;
  const TOKEN_KEY = 'warren.apiToken';

  const key = decodeURIComponent(location.pathname.replace(/^\/jobs\//, ''));
  let job = null;
  let logShown = false;

  // ---- fields -------------------------------------------------------------

  function field(label, name, ...value) {
    return [el('dt', {}, label), el('dd', { 'data-field': name }, ...value)];
  }

  function timeWithIso(ms, iso) {
    return ms ? el('time', { datetime: iso || '', title: iso || '' }, W.time(ms)) : '—';
  }

  function durationNode(j) {
    if (j.status === 'running' && j.started_at_ms) return el('span', { className: 'ticking' }, W.elapsed(j.started_at_ms));
    return j.duration_ms === null || j.duration_ms === undefined ? '—' : W.duration(j.duration_ms);
  }

  function render(j) {
    job = j;
    W.heading({ status: 'job-status', title: 'job-title', sub: 'job-sub' }, j);
    document.getElementById('raw-log').setAttribute('href', W.safeHref(j.log_url));
    document.getElementById('commit-link').setAttribute('href', W.safeHref('/commits/' + encodeURIComponent(j.commit)));
    const waited = j.started_at_ms && j.enqueued_at_ms ? W.duration(j.started_at_ms - j.enqueued_at_ms) : '—';
    document.getElementById('fields').replaceChildren(
      ...field('Status', 'status', W.badge(j.status)),
      ...field('Name', 'name', j.name || 'test'),
      ...field('Job', 'id', el('code', {}, j.id)),
      ...field('Queue', 'queue', j.queue || 'default'),
      ...field('Needs', 'needs', (j.needs || []).length ? j.needs.join(', ') : '—'),
      ...field('Waiting', 'waiting_reason', j.waiting_reason || '—'),
      ...field('Repository', 'repo', j.repo),
      ...field('Branch', 'branch', j.branch),
      ...field('Commit', 'commit', el('code', {}, j.commit)),
      ...field('Subject', 'subject', j.subject || '—'),
      ...field('Author', 'author', j.author || '—'),
      ...field('Runner', 'runner', j.runner || '—'),
      ...field('Sandbox', 'sandbox', sandboxNode(j.sandbox)),
      ...field('Attempts', 'attempts', String(j.attempts)),
      ...field('Duplicate results', 'duplicates', String(j.duplicates)),
      ...field('Queued', 'enqueued_at', timeWithIso(j.enqueued_at_ms, j.enqueued_at)),
      ...field('Started', 'started_at', timeWithIso(j.started_at_ms, j.started_at)),
      ...field('Finished', 'finished_at', timeWithIso(j.finished_at_ms, j.finished_at)),
      ...field('Waited in queue', 'waited', waited),
      ...field('Duration', 'duration', durationNode(j)),
      ...field('Exit code', 'exit_code', j.exit_code === null || j.exit_code === undefined ? '—' : String(j.exit_code)),
      ...field('Reason', 'reason', j.reason || '—'),
      ...field('Output', 'truncated', j.truncated ? 'truncated at the runner\'s output cap' : 'complete'),
      ...field('Sequence', 'seq', String(j.seq)));
    document.getElementById('job').hidden = false;
    loadPipeline(j);
    if (W.isTerminal(j.status)) loadTests(j);
    if (W.isTerminal(j.status) && !logShown) loadLog();
    if (!W.isTerminal(j.status)) {
      document.getElementById('log-note').textContent = 'The log appears here when the job finishes.';
    }
  }

  // The commit's pipeline: its verdict and every job, with why each
  // waits. Read again with every change of this job (a change of another
  // job of the pipeline shows on that job's page, and here on reload).
  async function loadPipeline(j) {
    try {
      const view = await W.getJSON('/api/commits/' + encodeURIComponent(j.commit));
      if (view.pipeline !== j.pipeline) return;
      document.getElementById('verdict').replaceChildren(W.badge(view.status));
      document.getElementById('pipeline').replaceChildren(...view.jobs.map((other) =>
        el('li', { className: other.id === j.id ? 'current' : '' },
          W.badge(other.status),
          el('a', { href: '/jobs/' + encodeURIComponent(other.id) }, other.name),
          other.queue && other.queue !== 'default' ? el('span', { className: 'why' }, 'queue ' + other.queue) : null,
          other.waiting_reason ? el('span', { className: 'why' }, other.waiting_reason) : null,
          other.runner ? el('span', { className: 'why' }, other.runner) : null,
          W.isTerminal(other.status) && other.duration_ms !== null && other.duration_ms !== undefined
            ? el('span', { className: 'why' }, W.duration(other.duration_ms)) : null,
          other.reason && other.status === 'skipped' ? el('span', { className: 'why' }, other.reason) : null)));
    } catch (e) {
      document.getElementById('pipeline').replaceChildren(el('li', { className: 'why' }, 'Cannot load the pipeline (' + e.message + ').'));
    }
  }

  // A split job's tests (/api/jobs/{id}/tests): those that did not pass
  // first, then the slowest; each with the batch (a job) that ran it last.
  async function loadTests(j) {
    let tests;
    try {
      tests = await W.getJSON('/api/jobs/' + encodeURIComponent(j.id) + '/tests');
    } catch (e) {
      return;
    }
    if (!Array.isArray(tests) || !tests.length) return;
    const order = { failed: 0, flaky: 1, skipped: 2, passed: 3 };
    tests.sort((a, b) => (order[a.status] ?? 4) - (order[b.status] ?? 4) || b.duration_ms - a.duration_ms);
    const count = (status) => tests.filter((t) => t.status === status).length;
    document.getElementById('tests-summary').textContent = tests.length + ' tests: ' +
      count('passed') + ' passed, ' + count('failed') + ' failed, ' + count('flaky') + ' flaky, ' +
      count('skipped') + ' skipped';
    document.getElementById('tests-body').replaceChildren(...tests.map((t) =>
      el('tr', { 'data-test': t.test },
        el('td', {}, el('code', {}, t.test)),
        el('td', {}, W.badge(t.status)),
        el('td', {}, W.duration(t.duration_ms)),
        el('td', {}, String(t.attempts)),
        el('td', {}, t.runner || '—'),
        el('td', {}, el('a', { href: '/jobs/' + encodeURIComponent(t.batch) }, W.shortCommit(t.batch))))));
    document.getElementById('tests').hidden = false;
  }

  // A job run without isolation says so plainly: its test could read the
  // runner's secrets and other repositories' clones.
  function sandboxNode(sandbox) {
    if (sandbox === 'none') return el('span', { className: 'warning' }, 'ran without a sandbox');
    return sandbox || '—';
  }

  // Changes that arrive while the job is first fetched are applied after
  // it, if they are further along than what was fetched.
  let early = [];
  const rank = (j) => (j.status === 'waiting' || j.status === 'queued' ? 0 : j.status === 'running' ? 1 : 2);

  async function load() {
    try {
      const fetched = await W.getJSON('/api/jobs/' + encodeURIComponent(key));
      render(fetched);
      const missed = early.filter((e) => e.id === fetched.id &&
        (rank(e) > rank(fetched) || (rank(e) === rank(fetched) && e.attempts > fetched.attempts)));
      early = [];
      if (missed.length) render(missed[missed.length - 1]);
      W.showError('');
    } catch (e) {
      if (e.status === 404) {
        W.showError('There is no job with id or commit "' + key + '".');
      } else {
        W.showError('Cannot load the job (' + e.message + '). Retrying…');
        setTimeout(load, 3000);
      }
    }
  }

  // ---- log ----------------------------------------------------------------

  async function loadLog() {
    logShown = true;
    const note = document.getElementById('log-note');
    let text;
    try {
      const response = await fetch(W.safeHref(job.log_url), { cache: 'no-store' });
      if (!response.ok) throw new Error(response.status + ' ' + response.statusText);
      text = await response.text();
    } catch (e) {
      logShown = false;
      note.textContent = 'Cannot load the log (' + e.message + ').';
      return;
    }
    renderLog(text);
    const lines = document.getElementById('log').childElementCount;
    note.textContent = lines === 0
      ? 'This job produced no output.'
      : lines + (lines === 1 ? ' line' : ' lines') + (job.truncated ? '; the output was cut at the runner\'s output cap.' : '.');
    // Jump to a line linked as #L12.
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView({ block: 'center' });
    }
  }

  function renderLog(text) {
    const lines = text.split('\n');
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    const ansi = newAnsiState();
    const fragment = document.createDocumentFragment();
    lines.forEach((line, i) => {
      const n = i + 1;
      const code = el('span', { className: 'code' });
      appendAnsi(code, line, ansi);
      fragment.append(el('div', { className: 'line', id: 'L' + n },
        el('a', { className: 'ln', href: '#L' + n, 'aria-hidden': 'true' }, String(n)), code));
    });
    document.getElementById('log').replaceChildren(fragment);
  }

  // ---- ANSI escape sequences ----------------------------------------------
  //
  // SGR sequences (ESC [ … m) become styled spans: bold, dim, italic,
  // underline, the 16 standard colours (CSS classes), 256-colour and
  // 24-bit colours (inline colour set through the DOM). Every other escape
  // sequence (cursor movement, OSC titles and links, charset switches) and
  // other control characters are dropped. A carriage return inside a line
  // (progress bars) keeps what was written after it.

  function newAnsiState() {
    return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  }

  // CSI with final byte | CSI cut short | OSC | nF escape | Fe escape | lone ESC.
  const ESCAPE = /\x1b(?:\[([0-?]*)[ -\/]*([@-~])|\[[0-?]*[ -\/]*|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -\/]+[0-~]?|[@-Z\\-_]|)/g;
  const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

  function appendAnsi(parent, line, state) {
    const parts = line.split('\r');
    parts.forEach((part, i) => {
      const shown = i === parts.length - 1;
      let last = 0;
      ESCAPE.lastIndex = 0;
      let match;
      while ((match = ESCAPE.exec(part)) !== null) {
        if (shown) addText(parent, part.slice(last, match.index), state);
        if (match[2] === 'm') applySgr(state, match[1]);
        last = ESCAPE.lastIndex;
      }
      if (shown) addText(parent, part.slice(last), state);
    });
  }

  function addText(parent, text, state) {
    text = text.replace(CONTROL, '');
    if (!text) return;
    const plain = state.fg === null && state.bg === null && !state.bold && !state.dim && !state.italic && !state.underline;
    if (plain) {
      parent.append(document.createTextNode(text));
      return;
    }
    const span = document.createElement('span');
    const classes = [];
    if (typeof state.fg === 'number') classes.push('ansi-fg-' + state.fg);
    else if (state.fg) span.style.color = state.fg;
    if (typeof state.bg === 'number') classes.push('ansi-bg-' + state.bg);
    else if (state.bg) span.style.backgroundColor = state.bg;
    if (state.bold) classes.push('ansi-bold');
    if (state.dim) classes.push('ansi-dim');
    if (state.italic) classes.push('ansi-italic');
    if (state.underline) classes.push('ansi-underline');
    span.className = classes.join(' ');
    span.textContent = text;
    parent.append(span);
  }

  // A colour from the 256-colour palette: 0–15 by class, the rest as rgb().
  function palette(n) {
    if (n < 16) return n;
    if (n < 232) {
      const level = (v) => (v === 0 ? 0 : 55 + v * 40);
      const i = n - 16;
      return 'rgb(' + level(Math.floor(i / 36)) + ',' + level(Math.floor(i / 6) % 6) + ',' + level(i % 6) + ')';
    }
    const grey = 8 + (n - 232) * 10;
    return 'rgb(' + grey + ',' + grey + ',' + grey + ')';
  }

  function applySgr(state, params) {
    const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(state, newAnsiState());
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) state.bold = state.dim = false;
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) state.fg = c - 30;
      else if (c >= 90 && c <= 97) state.fg = c - 90 + 8;
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = c - 40;
      else if (c >= 100 && c <= 107) state.bg = c - 100 + 8;
      else if (c === 49) state.bg = null;
      else if (c === 38 || c === 48) {
        let colour = null;
        if (codes[i + 1] === 5 && codes[i + 2] >= 0 && codes[i + 2] <= 255) {
          colour = palette(codes[i + 2]);
          i += 2;
        } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.min(255, Math.max(0, v | 0)));
          colour = 'rgb(' + r + ',' + g + ',' + b + ')';
          i += 4;
        } else {
          break; // malformed: ignore the rest
        }
        if (c === 38) state.fg = colour;
        else state.bg = colour;
      }
    }
  }

  // ---- rerun --------------------------------------------------------------

  const rerunButton = document.getElementById('rerun');
  const rerunResult = document.getElementById('rerun-result');

  function postRerun(token) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    return fetch('/api/jobs/' + encodeURIComponent(job.id) + '/rerun', { method: 'POST', headers });
  }

  rerunButton.addEventListener('click', async () => {
    if (!job) return;
    rerunButton.disabled = true;
    rerunResult.replaceChildren('Queuing…');
    try {
      let response = await postRerun(localStorage.getItem(TOKEN_KEY));
      if (response.status === 401) {
        const token = window.prompt('This dispatcher needs its API token (WARREN_API_TOKEN) to rerun jobs. ' +
          'It is kept in this browser.');
        if (token) {
          localStorage.setItem(TOKEN_KEY, token.trim());
          response = await postRerun(token.trim());
        }
        if (response.status === 401) localStorage.removeItem(TOKEN_KEY);
      }
      const body = await response.json().catch(() => ({}));
      if (response.ok && body.id) {
        rerunResult.replaceChildren('Queued as ', el('a', { href: W.jobUrl(body.id), id: 'rerun-link' }, body.id), '.');
      } else {
        rerunResult.replaceChildren('Rerun failed: ' + (body.error || response.status + ' ' + response.statusText));
      }
    } catch (e) {
      rerunResult.replaceChildren('Rerun failed: ' + e.message);
    } finally {
      rerunButton.disabled = false;
    }
  });

  // ---- live ---------------------------------------------------------------

  W.everySecond(() => {
    if (job && job.status === 'running' && job.started_at_ms) {
      const ticking = document.querySelector('[data-field="duration"] .ticking');
      if (ticking) ticking.textContent = W.elapsed(job.started_at_ms);
    }
  });

  W.live((changed) => {
    if (!job) early.push(changed);
    else if (changed.id === job.id) render(changed);
  }, load);
  load();
})();
