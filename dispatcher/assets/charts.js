// Warren dashboard: what every chart shares. The charts are drawn by
// Chart.js (vendored as chart.umd.min.js, MIT, see vendor/); this file
// gives them Warren's colours and keeps one chart per canvas, updated in
// place when the numbers change. Every chart also has a table of the same
// numbers (for screen readers, and to copy from).
'use strict';

window.Warren.charts = (function () {
  const W = window.Warren;

  // The statuses' colours, as the stylesheet defines them.
  function colour(status) {
    const root = getComputedStyle(document.documentElement);
    const name = { passed: '--passed', failed: '--failed', error: '--error', timeout: '--timeout', running: '--running' }[status] || '--queued';
    return root.getPropertyValue(name).trim() || '#6e7781';
  }

  // A colour with some transparency: "#rrggbb" → "rgba(…, alpha)".
  function faded(hex, alpha) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
    if (!m) return hex;
    return 'rgba(' + [m[1], m[2], m[3]].map((h) => parseInt(h, 16)).join(', ') + ', ' + alpha + ')';
  }

  // Draws `config` on `canvas`, or, if a chart is there already, gives it
  // the new data and options without animating (live updates).
  function draw(canvas, config) {
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
    const existing = window.Chart.getChart(canvas);
    if (existing && existing.config.type === config.type) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update('none');
      return existing;
    }
    if (existing) existing.destroy();
    return new window.Chart(canvas, config);
  }

  // Fills a table body with rows of cells (strings or nodes).
  function table(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => W.el('tr', {}, ...cells.map((cell) => W.el('td', {}, cell)))));
  }

  return { colour, faded, draw, table };
})();
