// Warren dashboard: trends under the jobs list, for the repository and
// branch the list is filtered by (all repositories, and the newest job's
// branch, when it is not): how long each job took in its last runs (a dot
// per run coloured by outcome, and the median), the pass rate per day, and
// the queue and the runners over the last hour. From /api/trends, read
// again every 15 seconds; each chart has a table of the same numbers.
'use strict';

(function () {
  const W = window.Warren;
  const C = W.charts;
  const params = new URLSearchParams(location.search);
  const scope = new URLSearchParams();
  for (const name of ['repo', 'branch']) if (params.get(name)) scope.set(name, params.get(name));
  let trends = null;
  let chosen = null;

  function renderDurations() {
    const select = document.getElementById('trend-name');
    const names = trends.durations.map((d) => d.name);
    if (!names.includes(chosen)) chosen = names[0] || null;
    select.replaceChildren(...names.map((name) => W.el('option', { value: name, selected: name === chosen ? 'selected' : null }, name)));
    select.disabled = !names.length;
    const trend = trends.durations.find((d) => d.name === chosen);
    const runs = trend ? trend.runs : [];
    document.getElementById('trend-median').textContent = trend
      ? 'median ' + W.duration(trend.median_ms) + ' over ' + runs.length + (runs.length === 1 ? ' run' : ' runs')
      : 'no finished runs yet';
    const last = Math.max(runs.length, 1);
    C.draw(document.getElementById('durations-chart'), {
      type: 'scatter',
      data: {
        datasets: [
          {
            label: 'run',
            data: runs.map((run, i) => ({ x: i + 1, y: run.duration_ms / 1000 })),
            pointBackgroundColor: runs.map((run) => C.colour(run.status)),
            pointBorderColor: runs.map((run) => C.colour(run.status)),
            pointRadius: 4,
          },
          {
            type: 'line',
            label: 'median',
            data: trend ? [{ x: 1, y: trend.median_ms / 1000 }, { x: last, y: trend.median_ms / 1000 }] : [],
            borderColor: C.colour('queued'),
            borderDash: [5, 4],
            borderWidth: 1.5,
            pointRadius: 0,
          },
        ],
      },
      options: {
        scales: {
          x: { type: 'linear', min: 0, max: last + 1, title: { display: true, text: 'run (oldest left)' }, ticks: { precision: 0 } },
          y: { min: 0, title: { display: true, text: 'seconds' } },
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: (item) => {
                const run = item.datasetIndex === 0 ? runs[item.dataIndex] : null;
                return run ? W.shortCommit(run.commit) + ' ' + run.status + ' ' + W.duration(run.duration_ms)
                  : 'median ' + W.duration(1000 * item.parsed.y);
              },
            },
          },
        },
      },
    });
    C.table(document.getElementById('durations-table'), runs.map((run, i) => [
      String(i + 1), W.el('a', { href: W.jobUrl(run.id) }, W.shortCommit(run.commit)), run.status, W.duration(run.duration_ms),
    ]));
  }

  function renderPassRate() {
    const days = trends.pass_rate;
    C.draw(document.getElementById('pass-rate-chart'), {
      type: 'bar',
      data: {
        labels: days.map((d) => d.day),
        datasets: [{
          label: 'passed',
          data: days.map((d) => (d.total ? (100 * d.passed) / d.total : 0)),
          backgroundColor: C.faded(C.colour('passed'), 0.75),
          maxBarThickness: 40,
        }],
      },
      options: {
        scales: { y: { min: 0, max: 100, title: { display: true, text: '% passed' } } },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (item) => days[item.dataIndex].passed + ' of ' + days[item.dataIndex].total + ' passed' } },
        },
      },
    });
    C.table(document.getElementById('pass-rate-table'), days.map((d) => [
      d.day, String(d.passed), String(d.total), d.total ? Math.round((100 * d.passed) / d.total) + ' %' : '—',
    ]));
  }

  function renderLoad() {
    const samples = trends.load;
    const now = Date.now();
    const minutes = (s) => (s.at_ms - now) / 60000;
    const line = (label, field, status) => ({
      label,
      data: samples.map((s) => ({ x: minutes(s), y: s[field] })),
      borderColor: C.colour(status),
      backgroundColor: C.colour(status),
      pointRadius: samples.length > 60 ? 0 : 2,
      stepped: true,
    });
    C.draw(document.getElementById('load-chart'), {
      type: 'line',
      data: {
        datasets: [line('jobs queued', 'queued', 'queued'), line('runners busy', 'running', 'running'), line('runners online', 'runners_online', 'passed')],
      },
      options: {
        scales: {
          // The last hour, or less while the dispatcher has not seen one.
          x: { type: 'linear', min: samples.length ? Math.max(-60, Math.floor(minutes(samples[0]))) : -60, max: 0, title: { display: true, text: 'minutes ago' } },
          y: { min: 0, ticks: { precision: 0 } },
        },
      },
    });
    C.table(document.getElementById('load-table'), samples.map((s) => [
      W.time(s.at_ms), String(s.queued), String(s.running), String(s.runners_online),
    ]));
  }

  async function load() {
    try {
      trends = await W.getJSON('/api/trends?' + scope);
    } catch (e) {
      return;
    }
    const where = trends.repo ? W.repoName(trends.repo) : 'all repositories';
    document.getElementById('trends-scope').textContent = where + (trends.branch ? ', durations on ' + trends.branch : '');
    document.getElementById('trends').hidden = false;
    renderDurations();
    renderPassRate();
    renderLoad();
  }

  document.getElementById('trend-name').addEventListener('change', (event) => {
    chosen = event.target.value;
    renderDurations();
  });
  setInterval(load, 15000);
  load();
})();
