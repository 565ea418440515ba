// Warren dashboard: one commit (`/commits/{sha}`): its pipeline as a graph
// (a node per job, matrix and split jobs grouped, an edge per `needs`) and
// a timeline (a bar per job from queued to started to finished, grouped
// by runner). Both follow /api/events: any change of a job of this commit
// reads the pipeline again.
//
// The graph's layout is ours (columns by the longest chain of needs, SVG
// built with createElementNS and textContent); the timeline is a Chart.js
// chart (see charts.js).
'use strict';

(function () {
  const W = window.Warren;
  const C = W.charts;
  const SVG = 'http://www.w3.org/2000/svg';
  const NODE_W = 190;
  const NODE_H = 50;
  const GAP_X = 56;
  const GAP_Y = 16;

  const key = decodeURIComponent(location.pathname.replace(/^\/commits\//, ''));
  let view = null;

  // Which node a job is drawn in: a matrix job's combination `(…)` and a
  // split job's part `[…]` are dropped, so they share their job's node.
  function nodeName(name) {
    return String(name).replace(/ \[[^\]]*\]$/, '').replace(/ \([^)]*\)$/, '');
  }

  // A node's status: the most pressing of its jobs'.
  const PRECEDENCE = ['running', 'queued', 'waiting', 'failed', 'error', 'timeout', 'canceled', 'skipped', 'passed'];
  function nodeStatus(jobs) {
    let best = jobs[0].status;
    for (const job of jobs) {
      if (PRECEDENCE.indexOf(job.status) < PRECEDENCE.indexOf(best)) best = job.status;
    }
    return best;
  }

  // The pipeline's nodes, in the order their first job was recorded, each
  // with the nodes it needs and its column.
  function nodesOf(jobs, pipeline) {
    const byName = new Map();
    for (const job of jobs) {
      const name = job.id === pipeline ? job.name : nodeName(job.name);
      if (!byName.has(name)) byName.set(name, { name, jobs: [], needs: new Set(), planning: job.id === pipeline });
      byName.get(name).jobs.push(job);
    }
    const nameOf = new Map(jobs.map((job) => [job.name, job.id === pipeline ? job.name : nodeName(job.name)]));
    for (const node of byName.values()) {
      for (const job of node.jobs) {
        for (const need of job.needs || []) {
          const target = nameOf.get(need) || nodeName(need);
          if (target !== node.name && byName.has(target)) node.needs.add(target);
        }
      }
    }
    // Column: the longest chain of needs before it (after the planning job's).
    const column = new Map();
    const depth = (node, seen) => {
      if (column.has(node.name)) return column.get(node.name);
      if (seen.has(node.name)) return 0;
      seen.add(node.name);
      let d = node.planning ? 0 : 1;
      for (const need of node.needs) d = Math.max(d, depth(byName.get(need), seen) + 1);
      column.set(node.name, d);
      return d;
    };
    for (const node of byName.values()) node.column = depth(node, new Set());
    // Without a planning job, start at the left edge.
    const first = Math.min(...[...byName.values()].map((n) => n.column));
    for (const node of byName.values()) node.column -= first;
    return [...byName.values()];
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      node.setAttribute(name, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function text(x, y, className, content) {
    const node = svg('text', { x, y, class: className });
    node.textContent = content;
    return node;
  }

  function clip(s, max) {
    s = String(s);
    return s.length > max ? s.slice(0, max - 1) + '…' : s;
  }

  // What a node says under its name: its duration (ticking while it
  // runs), why it waits, or how many jobs it holds.
  function nodeDetail(node, status) {
    const jobs = node.jobs;
    const starts = jobs.map((j) => j.started_at_ms).filter((v) => v);
    const ends = jobs.map((j) => j.finished_at_ms).filter((v) => v);
    const count = jobs.length > 1 ? jobs.length + ' jobs · ' : '';
    if (status === 'waiting' || status === 'queued') {
      const reason = jobs.map((j) => j.waiting_reason).find((r) => r);
      return count + (reason || status);
    }
    if (status === 'running' && starts.length) return count + W.elapsed(Math.min(...starts));
    if (starts.length && ends.length) return count + W.duration(Math.max(...ends) - Math.min(...starts));
    const reason = jobs.map((j) => j.reason).find((r) => r);
    return count + (reason || status);
  }

  function renderGraph(nodes) {
    const columns = new Map();
    for (const node of nodes) {
      if (!columns.has(node.column)) columns.set(node.column, []);
      columns.get(node.column).push(node);
    }
    const at = new Map();
    let rows = 0;
    for (const [column, members] of columns) {
      members.forEach((node, row) => at.set(node.name, {
        x: 8 + column * (NODE_W + GAP_X),
        y: 8 + row * (NODE_H + GAP_Y),
      }));
      rows = Math.max(rows, members.length);
    }
    const width = 16 + (Math.max(...columns.keys()) + 1) * (NODE_W + GAP_X) - GAP_X;
    const height = 16 + rows * (NODE_H + GAP_Y) - GAP_Y;
    const root = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, width, height, class: 'graph-svg' });
    const edges = svg('g', { class: 'edges' });
    for (const node of nodes) {
      const to = at.get(node.name);
      for (const need of node.needs) {
        const from = at.get(need);
        const x1 = from.x + NODE_W;
        const y1 = from.y + NODE_H / 2;
        const x2 = to.x;
        const y2 = to.y + NODE_H / 2;
        const bend = GAP_X / 2;
        edges.append(svg('path', {
          class: 'edge', 'data-from': need, 'data-to': node.name,
          d: 'M' + x1 + ' ' + y1 + ' C' + (x1 + bend) + ' ' + y1 + ' ' + (x2 - bend) + ' ' + y2 + ' ' + x2 + ' ' + y2,
        }));
      }
    }
    root.append(edges);
    for (const node of nodes) {
      const { x, y } = at.get(node.name);
      const status = nodeStatus(node.jobs);
      const link = svg('a', { href: W.safeHref(W.jobUrl(node.jobs[0].id)) });
      const icon = W.icon(status);
      icon.setAttribute('x', x + 10);
      icon.setAttribute('y', y + 9);
      icon.setAttribute('width', 16);
      icon.setAttribute('height', 16);
      const title = svg('title');
      title.textContent = node.name + ': ' + status + (node.jobs.length > 1 ? ' (' + node.jobs.map((j) => j.name + ' ' + j.status).join(', ') + ')' : '');
      link.append(
        title,
        svg('rect', { x, y, width: NODE_W, height: NODE_H, rx: 6, class: 'node-box' }),
        icon,
        text(x + 32, y + 21, 'node-name', clip(node.name, 22)),
        text(x + 10, y + 40, 'node-detail', clip(nodeDetail(node, status), 30)));
      root.append(svg('g', {
        class: 'node status-' + W.statusClass(status), 'data-node': node.name, 'data-status': status,
        'data-jobs': node.jobs.length,
      }, link));
    }
    document.getElementById('graph').replaceChildren(root);
    document.getElementById('graph-summary').textContent =
      nodes.length + (nodes.length === 1 ? ' node, ' : ' nodes, ') + view.jobs.length + (view.jobs.length === 1 ? ' job' : ' jobs');
    C.table(document.getElementById('graph-table'), nodes.map((node) => {
      const status = nodeStatus(node.jobs);
      return [node.name, status, String(node.jobs.length), [...node.needs].join(', ') || '—',
        nodeDetail(node, status), node.jobs.map((j) => j.waiting_reason).find((r) => r) || '—'];
    }));
  }

  // A bar per job, grouped by runner, from its first queueing.
  function renderTimeline(jobs) {
    const rows = jobs.slice().sort((a, b) =>
      String(a.runner || '\uffff').localeCompare(String(b.runner || '\uffff')) ||
      (a.started_at_ms || Infinity) - (b.started_at_ms || Infinity) || a.seq - b.seq);
    const queuedTimes = rows.map((j) => j.enqueued_at_ms).filter((v) => v);
    const t0 = queuedTimes.length ? Math.min(...queuedTimes) : Date.now();
    const now = Date.now();
    const s = (ms) => (ms - t0) / 1000;
    const waited = rows.map((j) => j.enqueued_at_ms ? [s(j.enqueued_at_ms), s(j.started_at_ms || j.finished_at_ms || now)] : null);
    const ran = rows.map((j) => j.started_at_ms ? [s(j.started_at_ms), s(j.finished_at_ms || now)] : null);
    const queuedColour = C.faded(C.colour('queued'), 0.3);
    const box = document.getElementById('timeline-box');
    box.style.height = (56 + rows.length * 24) + 'px';
    C.draw(document.getElementById('timeline'), {
      type: 'bar',
      data: {
        labels: rows.map((j) => j.name + ' · ' + (j.runner || 'no runner')),
        datasets: [
          { label: 'queued', data: waited, backgroundColor: queuedColour, grouped: false, barPercentage: 0.7 },
          { label: 'running', data: ran, backgroundColor: rows.map((j) => C.colour(j.status)), grouped: false, barPercentage: 0.7 },
        ],
      },
      options: {
        indexAxis: 'y',
        scales: {
          x: { type: 'linear', min: 0, title: { display: true, text: 'seconds since the first job was queued' } },
          y: { ticks: { autoSkip: false } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (item) => item.dataset.label + ' ' + W.duration(1000 * (item.raw[1] - item.raw[0])) } },
        },
      },
    });
    C.table(document.getElementById('timeline-table'), rows.map((j) => [
      j.name, j.runner || '—', j.status,
      j.enqueued_at_ms ? s(j.enqueued_at_ms).toFixed(2) + ' s' : '—',
      j.started_at_ms ? s(j.started_at_ms).toFixed(2) + ' s' : '—',
      j.finished_at_ms ? s(j.finished_at_ms).toFixed(2) + ' s' : '—',
    ]));
  }

  function render() {
    const first = view.jobs[0] || {};
    W.heading({ status: 'verdict', title: 'commit-title', sub: 'commit-sub' }, {
      status: view.status, repo: view.repo, branch: view.branch, commit: view.commit,
      subject: first.subject, author: first.author,
    });
    document.getElementById('commit').hidden = false;
    renderGraph(nodesOf(view.jobs, view.pipeline));
    renderTimeline(view.jobs);
  }

  let loading = null;
  let again = false;
  // Reads the pipeline; a change that arrives while reading reads again.
  async function load() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      do {
        again = false;
        try {
          view = await W.getJSON('/api/commits/' + encodeURIComponent(key));
          W.showError('');
          render();
        } catch (e) {
          W.showError(e.status === 404 ? 'No commit ' + key + ' is known.' : 'Cannot load the commit (' + e.message + ').');
        }
      } while (again);
      loading = null;
    })();
    return loading;
  }

  W.everySecond(() => {
    if (view && view.jobs.some((j) => j.status === 'running' || j.status === 'queued')) render();
  });
  W.live((job) => {
    if (view && (job.pipeline === view.pipeline || job.commit === view.commit)) load();
  }, load);
  load();
})();
