// Warren dashboard: helpers shared by every page.
//
// Rule for all of the dashboard's scripts: data from the API (commit
// subjects, branch names, logs, runner ids, …) only ever reaches the page
// as text (`textContent`, text nodes, `value`); never through innerHTML.
'use strict';

window.Warren = (function () {
  // Jobs' statuses, and a commit's verdict (`pending` until a job starts).
  const STATUSES = ['waiting', 'queued', 'pending', 'running', 'passed', 'failed', 'error', 'timeout', 'skipped', 'canceled', 'flaky'];
  const TERMINAL = ['passed', 'failed', 'error', 'timeout', 'skipped', 'canceled'];
  const SVG = 'http://www.w3.org/2000/svg';

  // el('a', {href: '/x', className: 'y'}, 'text', otherNode): an element
  // whose string children become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'className') node.className = value;
      else if (key === 'href') node.setAttribute('href', safeHref(value));
      else if (key.startsWith('on')) throw new Error('use addEventListener');
      else node.setAttribute(key, String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Only same-site paths and http(s) URLs become links.
  function safeHref(url) {
    const text = String(url);
    if (text.startsWith('/') && !text.startsWith('//')) return text;
    if (/^https?:\/\//i.test(text)) return text;
    return '#';
  }

  function statusClass(status) {
    return STATUSES.includes(status) ? status : 'unknown';
  }

  function isTerminal(status) {
    return TERMINAL.includes(status);
  }

  // Icons as SVG shapes (no icon font, so they look the same everywhere).
  const disc = ['circle', { cx: 8, cy: 8, r: 7.5, fill: 'currentColor' }];
  const mark = { fill: 'none', stroke: '#fff', 'stroke-width': 1.9, 'stroke-linecap': 'round', 'stroke-linejoin': 'round' };
  const ICONS = {
    queued: [['circle', { cx: 8, cy: 8, r: 6.5, fill: 'none', stroke: 'currentColor', 'stroke-width': 1.6, 'stroke-dasharray': '2.55 2.55' }]],
    running: [
      ['circle', { cx: 8, cy: 8, r: 6.5, fill: 'none', stroke: 'currentColor', 'stroke-opacity': 0.25, 'stroke-width': 2 }],
      ['path', { d: 'M8 1.5a6.5 6.5 0 0 1 6.5 6.5', fill: 'none', stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round' }],
    ],
    passed: [disc, ['path', Object.assign({ d: 'M4.6 8.3l2.2 2.2 4.6-4.8' }, mark)]],
    failed: [disc, ['path', Object.assign({ d: 'M5.4 5.4l5.2 5.2m0-5.2l-5.2 5.2' }, mark)]],
    error: [disc, ['path', Object.assign({ d: 'M8 4.2v4.6M8 11.5v.2' }, mark)]],
    timeout: [disc, ['path', Object.assign({ d: 'M8 4.2V8l2.6 1.7' }, mark)]],
    skipped: [['circle', { cx: 8, cy: 8, r: 6.5, fill: 'none', stroke: 'currentColor', 'stroke-width': 1.6 }],
      ['path', { d: 'M4.8 8h6.4', fill: 'none', stroke: 'currentColor', 'stroke-width': 1.8, 'stroke-linecap': 'round' }]],
    canceled: [disc, ['path', Object.assign({ d: 'M5 8h6' }, mark)]],
    // A test that failed, then passed alone (a split job's tests).
    flaky: [disc, ['path', Object.assign({ d: 'M4.5 9.5l2-3 2 3 2-3 1.5 2' }, mark)]],
    unknown: [['circle', { cx: 8, cy: 8, r: 6.5, fill: 'none', stroke: 'currentColor', 'stroke-width': 1.6 }]],
  };

  function icon(status) {
    if (status === 'waiting' || status === 'pending') status = 'queued';
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', '0 0 16 16');
    svg.setAttribute('class', 'icon');
    svg.setAttribute('aria-hidden', 'true');
    for (const [tag, attrs] of ICONS[statusClass(status)]) {
      const shape = document.createElementNS(SVG, tag);
      for (const [key, value] of Object.entries(attrs)) shape.setAttribute(key, String(value));
      svg.append(shape);
    }
    return svg;
  }

  // The coloured status with its icon.
  function badge(status) {
    return el('span', { className: 'status status-' + statusClass(status), 'data-status': status },
      icon(status), el('span', { className: 'label' }, status));
  }

  function pad(n, width) {
    return String(n).padStart(width || 2, '0');
  }

  // "850 ms", "12.3 s", "4 min 05 s", "1 h 02 min".
  function duration(ms) {
    if (ms === null || ms === undefined || ms < 0) return '';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const seconds = ms / 1000;
    if (seconds < 60) return (seconds < 10 ? seconds.toFixed(1) : Math.floor(seconds)) + ' s';
    const s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + pad(Math.floor(s / 60) % 60) + ' min';
  }

  // Time since `sinceMs` in whole seconds, for a clock that ticks once a
  // second: "7 s", "2 min 03 s", "1 h 02 min".
  function elapsed(sinceMs) {
    const s = Math.max(0, Math.floor((Date.now() - sinceMs) / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + pad(Math.floor(s / 60) % 60) + ' min';
  }

  // Local time: "14:03:22" today, "2024-05-01 14:03" otherwise.
  function time(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    const now = new Date();
    const clock = pad(d.getHours()) + ':' + pad(d.getMinutes());
    if (d.toDateString() === now.toDateString()) return clock + ':' + pad(d.getSeconds());
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + clock;
  }

  // "just now", "12 s ago", "3 min ago", "2 h ago", "4 d ago".
  function ago(ms) {
    if (!ms) return 'never';
    const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 2) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function shortCommit(commit) {
    return String(commit || '').slice(0, 10);
  }

  // "/srv/git/app.git" → "app"; the full name goes in a title.
  function repoName(repo) {
    const trimmed = String(repo || '').replace(/\/+$/, '').replace(/\.git$/, '');
    return trimmed.slice(trimmed.lastIndexOf('/') + 1) || trimmed;
  }

  function jobUrl(id) {
    return '/jobs/' + encodeURIComponent(id);
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!response.ok) {
      const error = new Error(url + ': ' + response.status + ' ' + response.statusText);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  // One timer for everything that ticks (elapsed times, "ago").
  const tickers = [];
  setInterval(() => tickers.forEach((fn) => fn()), 1000);
  function everySecond(fn) {
    tickers.push(fn);
  }

  // Follows /api/events: onJob(job) for every change; onReload() when
  // events may have been missed (the server said so, or the connection
  // came back), so the page fetches afresh.
  function live(onJob, onReload) {
    const indicator = document.getElementById('live');
    const show = (state, text) => {
      if (!indicator) return;
      indicator.className = 'live live-' + state;
      indicator.textContent = text;
    };
    if (!window.EventSource) {
      show('off', 'no live updates');
      return;
    }
    let opened = false;
    const source = new EventSource('/api/events');
    source.addEventListener('open', () => {
      show('on', 'live');
      if (opened) onReload();
      opened = true;
    });
    source.addEventListener('error', () => show('off', 'reconnecting…'));
    source.addEventListener('job', (event) => {
      let job;
      try {
        job = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      onJob(job);
    });
    source.addEventListener('reload', () => onReload());
    window.addEventListener('pagehide', () => source.close());
  }

  // A page's heading for one commit: the title, the status badge and the
  // line under it (repository · branch · commit · author). `ids`: the
  // elements' ids {status, title, sub}; `c`: {status, repo, branch,
  // commit, subject, author}.
  function heading(ids, c) {
    document.title = c.status + ' · ' + shortCommit(c.commit) + ' ' + (c.subject || '') + ' · Warren';
    document.getElementById(ids.status).replaceChildren(badge(c.status));
    document.getElementById(ids.title).textContent = c.subject || 'Commit ' + shortCommit(c.commit);
    document.getElementById(ids.sub).replaceChildren(
      el('span', { title: c.repo }, repoName(c.repo)), ' · ',
      el('a', { href: '/?' + new URLSearchParams({ branch: c.branch }) }, c.branch), ' · ',
      el('code', {}, shortCommit(c.commit)),
      c.author ? ' · ' + c.author : '');
  }

  function showError(message) {
    const box = document.getElementById('error');
    if (!box) return;
    box.textContent = message || '';
    box.hidden = !message;
  }

  return {
    STATUSES, el, append, safeHref, statusClass, isTerminal, icon, badge, duration, elapsed,
    time, ago, shortCommit, repoName, jobUrl, getJSON, everySecond, live, heading, showError,
  };
})();
