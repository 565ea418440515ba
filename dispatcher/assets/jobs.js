// Warren dashboard: the jobs list (`/`).
//
// The URL holds the view: `?status=`, `?repo=` (a registered repository's
// name, or a repository's URL), `?branch=`, `?limit=` (jobs per
// page, default 50) and `?before=<seq>` (keyset pagination: the next page is "jobs with seq below the last one
// shown", which costs the same on page 1 and page 2,000). The first page
// follows /api/events: new jobs are inserted at the top, and every row
// on screen is updated in place when its job changes. The repository
// registry (`/api/repos`) names the jobs' repositories and fills the
// repository filter.
'use strict';

(function () {
  const W = window.Warren;
  const { el } = W;
  const params = new URLSearchParams(location.search);
  const PAGE = Math.min(500, Math.max(1, Number.parseInt(params.get('limit'), 10) || 50));
  const filter = {
    status: params.get('status') || '',
    repo: params.get('repo') || '',
    branch: params.get('branch') || '',
    before: params.get('before') || '',
  };

  const tbody = document.getElementById('job-rows');
  const empty = document.getElementById('empty');
  const older = document.getElementById('older');
  const newest = document.getElementById('newest');
  const rows = new Map(); // job id → { tr, job }
  const names = new Map(); // registered repository URL → name
  const urls = new Map(); // registered name → URL

  // The filter form shows the current filters and applies a new status at once.
  const statusFilter = document.getElementById('status-filter');
  const repoFilter = document.getElementById('repo-filter');
  const branchFilter = document.getElementById('branch-filter');
  statusFilter.value = W.STATUSES.includes(filter.status) ? filter.status : '';
  branchFilter.value = filter.branch;
  statusFilter.addEventListener('change', () => document.getElementById('filters').requestSubmit());
  repoFilter.addEventListener('change', () => document.getElementById('filters').requestSubmit());
  showRepoOptions();
  document.getElementById('clear-filters').hidden = !(filter.status || filter.repo || filter.branch);
  newest.hidden = !filter.before;
  newest.setAttribute('href', pageUrl(''));

  function pageUrl(before) {
    const q = new URLSearchParams();
    if (filter.status) q.set('status', filter.status);
    if (filter.repo) q.set('repo', filter.repo);
    if (filter.branch) q.set('branch', filter.branch);
    if (params.has('limit')) q.set('limit', PAGE);
    if (before) q.set('before', before);
    const query = q.toString();
    return '/' + (query ? '?' + query : '');
  }

  function matches(job) {
    return (!filter.status || job.status === filter.status) &&
      (!filter.repo || job.repo === (urls.get(filter.repo) || filter.repo)) &&
      (!filter.branch || job.branch === filter.branch);
  }

  // The registry's names, in the filter and the rows; the filter keeps a
  // repository given by URL (or no longer registered) selectable.
  function setRegistry(repos) {
    names.clear();
    urls.clear();
    for (const repo of repos) {
      names.set(repo.url, repo.name);
      urls.set(repo.name, repo.url);
    }
    showRepoOptions();
  }

  function showRepoOptions() {
    const choices = [...urls.keys()].sort();
    if (filter.repo && !urls.has(filter.repo)) choices.push(filter.repo);
    repoFilter.replaceChildren(
      el('option', { value: '' }, 'all'),
      ...choices.map((name) => el('option', { value: name, title: urls.get(name) || name }, name)));
    repoFilter.value = filter.repo;
  }

  // A registered repository by its name, any other by its URL's last part.
  function repoCell(job) {
    const name = names.get(job.repo);
    const key = name || job.repo;
    return el('td', { className: 'repo', title: job.repo },
      el('a', { className: 'repo-link', href: '/?' + new URLSearchParams({ repo: key }), title: 'only ' + key }, name || W.repoName(job.repo)));
  }

  function startedText(job) {
    if (job.started_at_ms) return W.time(job.started_at_ms);
    return job.status === 'queued' ? 'waiting' : '';
  }

  function durationText(job) {
    if (job.status === 'running' && job.started_at_ms) return W.elapsed(job.started_at_ms);
    return W.duration(job.duration_ms);
  }

  function row(job) {
    const branchLink = el('a', { className: 'branch', href: '/?' + new URLSearchParams({ branch: job.branch }), title: 'only ' + job.branch }, job.branch);
    const commit = el('td', { className: 'commit' },
      el('a', { className: 'sha', href: W.jobUrl(job.id), title: job.commit }, W.shortCommit(job.commit)),
      ' ',
      el('span', { className: job.subject ? 'subject' : 'subject muted' }, job.subject || '(no subject)'),
      job.name && job.name !== 'test' ? el('span', { className: 'job-name' }, ' · ' + job.name) : null,
      job.author ? el('div', { className: 'author' }, job.author) : null);
    const started = el('td', { className: 'started', title: job.started_at || (job.enqueued_at ? 'queued at ' + job.enqueued_at : '') }, startedText(job));
    const attempts = el('td', { className: 'num attempts', title: job.duplicates ? job.duplicates + ' duplicate result(s) discarded' : '' }, job.attempts);
    return el('tr', {
      className: 'job status-' + W.statusClass(job.status),
      'data-id': job.id,
      'data-seq': job.seq,
      'data-commit': job.commit,
      'data-status': job.status,
    },
    el('td', {}, W.badge(job.status)),
    repoCell(job),
    el('td', {}, branchLink),
    commit,
    el('td', { className: 'runner' }, job.runner || ''),
    attempts,
    started,
    el('td', { className: 'num duration' }, durationText(job)));
  }

  function render(jobs, more) {
    rows.clear();
    tbody.replaceChildren(...jobs.map((job) => {
      const tr = row(job);
      rows.set(job.id, { tr, job });
      return tr;
    }));
    setOlder(more ? jobs[jobs.length - 1].seq : null);
    updateEmpty();
    rememberBranches(jobs);
  }

  function setOlder(seq) {
    older.hidden = seq === null;
    if (seq !== null) older.setAttribute('href', pageUrl(seq));
  }

  function updateEmpty() {
    empty.hidden = rows.size > 0;
    empty.textContent = filter.status || filter.repo || filter.branch || filter.before
      ? 'No jobs match these filters.'
      : 'No jobs yet. Make a commit in a watched repository and it appears here.';
  }

  const branches = new Set();
  function rememberBranches(jobs) {
    const list = document.getElementById('branches');
    for (const job of jobs) {
      if (branches.has(job.branch)) continue;
      branches.add(job.branch);
      list.append(el('option', { value: job.branch }));
    }
  }

  // Events that arrive while a page is being fetched are applied after
  // it, unless the fetched state is already further along.
  let loading = false;
  let pending = [];
  const rank = (job) => (job.status === 'queued' ? 0 : job.status === 'running' ? 1 : 2);
  function newer(job, than) {
    return rank(job) > rank(than) || (rank(job) === rank(than) && job.attempts >= than.attempts);
  }

  async function load() {
    loading = true;
    const q = new URLSearchParams({ limit: PAGE + 1 });
    if (filter.status) q.set('status', filter.status);
    if (filter.repo) q.set('repo', filter.repo);
    if (filter.branch) q.set('branch', filter.branch);
    if (filter.before) q.set('before', filter.before);
    try {
      // Without the registry the jobs still show, by their URLs.
      setRegistry(await W.getJSON('/api/repos').catch(() => []));
      const jobs = await W.getJSON('/api/jobs?' + q);
      render(jobs.slice(0, PAGE), jobs.length > PAGE);
      W.showError('');
      loading = false;
      const missed = pending;
      pending = [];
      for (const job of missed) {
        const known = rows.get(job.id);
        if (!known || newer(job, known.job)) update(job);
      }
    } catch (e) {
      W.showError('Cannot load jobs from the dispatcher (' + e.message + '). Retrying…');
      setTimeout(load, 3000);
    }
  }

  // A job changed: update its row, or put a new job in its place.
  function update(job) {
    if (loading) {
      pending.push(job);
      return;
    }
    const known = rows.get(job.id);
    if (known) {
      if (!matches(job)) {
        known.tr.remove();
        rows.delete(job.id);
        updateEmpty();
        return;
      }
      const tr = row(job);
      known.tr.replaceWith(tr);
      rows.set(job.id, { tr, job });
      return;
    }
    // New rows only appear on the first page, in seq order.
    if (filter.before || !matches(job)) return;
    const shown = [...rows.values()];
    const lowest = shown.length ? Math.min(...shown.map((r) => r.job.seq)) : -Infinity;
    if (shown.length >= PAGE && job.seq < lowest) return;
    const tr = row(job);
    const next = shown.map((r) => r.tr).find((other) => Number(other.dataset.seq) < job.seq);
    tbody.insertBefore(tr, next || null);
    rows.set(job.id, { tr, job });
    tr.classList.add('fresh');
    // Keep one page: what falls off the end is on the next page.
    while (rows.size > PAGE) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.id);
      last.remove();
      setOlder(Number(tbody.lastElementChild.dataset.seq));
    }
    updateEmpty();
    rememberBranches([job]);
  }

  // Running jobs' durations tick.
  W.everySecond(() => {
    for (const { tr, job } of rows.values()) {
      if (job.status === 'running' && job.started_at_ms) {
        tr.querySelector('.duration').textContent = W.elapsed(job.started_at_ms);
      }
    }
  });

  W.live(update, load);
  load();
})();
