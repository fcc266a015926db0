// The admin page: each portal's state, the event log with filters and paging, exports, and
// the live tail over WebSocket. Everything from the backend is shown as text, never as HTML.

import { describeError, readPageConfig, setState, showStatus } from './frame.js';

const SUMMARY_INTERVAL_MS = 30000;
const RECONNECT_DELAY_MS = 2000;
// The live tail prepends rows to the newest page; beyond this many the oldest are dropped.
const MAX_LIVE_ROWS = 500;
const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART = { width: 180, height: 40, delayHeight: 26 };
// Close codes after which reconnecting cannot help (see admin.py).
const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403]);

const config = readPageConfig();

/** The backend refused the admin token: reopening the page is the only way on. */
class TokenRefused extends Error {}

const view = {
  // The cursor of the page shown; null on the newest page.
  cursor: null,
  nextCursor: null,
  newestId: 0,
  socket: null,
  tailFinal: false,
  reconnectTimer: null,
};
window.adminTail = { received: [] };

/** Return a table cell holding `text` as plain text. */
function cell(text, className) {
  const element = document.createElement('td');
  element.textContent = text === undefined || text === null || text === '' ? '—' : String(text);
  if (className) {
    element.className = className;
  }
  return element;
}

/** Return an ISO time as the page's short local form, e.g. 2025-01-31 12:00:05. */
function localTime(iso) {
  if (!iso) {
    return null;
  }
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return iso;
  }
  const pad = (value) => String(value).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** Call the admin API and return its JSON body; throw TokenRefused on 401. */
async function api(path, params) {
  const query = params ? `?${params}` : '';
  const response = await fetch(`${config.apiUrl}${path}${query}`, {
    headers: { Authorization: `Bearer ${config.token}`, Accept: 'application/json' },
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    throw new TokenRefused(body.error || 'The admin token was refused.');
  }
  if (!response.ok) {
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  return body;
}

/** Return the filter form's values as query parameters (times in UTC). */
function filterParams() {
  const form = document.getElementById('filters');
  const params = new URLSearchParams();
  for (const [name, raw] of new FormData(form).entries()) {
    const value = String(raw).trim();
    if (!value) {
      continue;
    }
    if (name === 'since' || name === 'until') {
      // datetime-local is the viewer's local time without a zone; the API wants one.
      const date = new Date(value);
      if (Number.isNaN(date.getTime())) {
        throw new Error(`${name} is not a valid time.`);
      }
      params.set(name, date.toISOString());
    } else {
      params.set(name, value);
    }
  }
  return params;
}

/** Return the filter as the live tail's first message wants it: name to value. */
function filterObject(params) {
  return Object.fromEntries(params.entries());
}

// The summary.

/** Return a small inline SVG of one portal's last hour: delay as a line, failures as bars. */
function delayChart(minutes) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('viewBox', `0 0 ${CHART.width} ${CHART.height}`);
  svg.setAttribute('width', String(CHART.width));
  svg.setAttribute('height', String(CHART.height));
  svg.setAttribute('role', 'img');

  const step = CHART.width / Math.max(1, minutes.length);
  const delays = minutes.map((minute) => minute.delay_median_ms);
  const maxDelay = Math.max(1, ...delays.filter((delay) => delay !== null));
  const maxFailed = Math.max(1, ...minutes.map((minute) => minute.failed));
  const failures = minutes.reduce((sum, minute) => sum + minute.failed, 0);

  const title = document.createElementNS(SVG_NS, 'title');
  title.textContent = `Median delay per minute (top ${Math.round(maxDelay)} ms); ` +
    `${failures} failed pings in the hour`;
  svg.append(title);

  minutes.forEach((minute, index) => {
    if (minute.failed > 0) {
      const bar = document.createElementNS(SVG_NS, 'rect');
      const height = Math.max(2, (minute.failed / maxFailed) * (CHART.height - CHART.delayHeight));
      bar.setAttribute('class', 'failures');
      bar.setAttribute('x', (index * step).toFixed(1));
      bar.setAttribute('y', (CHART.height - height).toFixed(1));
      bar.setAttribute('width', Math.max(1, step - 0.5).toFixed(1));
      bar.setAttribute('height', height.toFixed(1));
      svg.append(bar);
    }
  });

  // One polyline per run of minutes with deliveries, so that gaps stay gaps.
  let points = [];
  const flush = () => {
    if (points.length) {
      const line = document.createElementNS(SVG_NS, 'polyline');
      line.setAttribute('class', 'delay');
      line.setAttribute('points', points.join(' '));
      svg.append(line);
    }
    points = [];
  };
  delays.forEach((delay, index) => {
    if (delay === null) {
      flush();
      return;
    }
    const x = index * step + step / 2;
    const y = CHART.delayHeight - (delay / maxDelay) * (CHART.delayHeight - 2) + 1;
    points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    if (points.length === 1 && (index === delays.length - 1 || delays[index + 1] === null)) {
      // A single minute still shows, as a dot.
      points.push(`${(x + 0.5).toFixed(1)},${y.toFixed(1)}`);
    }
  });
  flush();
  svg.dataset.deliveries = String(minutes.filter((minute) => minute.delay_median_ms !== null)
    .length);
  svg.dataset.failures = String(failures);
  return svg;
}

/** Return what stops the app from reaching the portal, or that nothing does. */
function accessText(portal) {
  if (portal.access_problem === 'needs_reauth') {
    return 'needs re-auth: an administrator must open the app';
  }
  if (portal.access_problem) {
    return `${portal.access_problem.replaceAll('_', ' ')}` +
      (portal.access_problem_detail ? ` (${portal.access_problem_detail})` : '');
  }
  if (portal.backoff_until && new Date(portal.backoff_until) > new Date()) {
    return `backing off until ${localTime(portal.backoff_until)} ` +
      `(${portal.backoff_failures} failures)`;
  }
  return portal.has_tokens ? 'ok' : 'no tokens';
}

function percentText(rate) {
  return rate === null || rate === undefined ? null : `${(rate * 100).toFixed(1)} %`;
}

function delayText(portal) {
  if (portal.delay_median_ms === null) {
    return null;
  }
  return `${Math.round(portal.delay_median_ms)} / ${Math.round(portal.delay_p95_ms)} ms`;
}

/** Fill the summary table from GET /summary. */
async function loadSummary() {
  const panel = document.getElementById('summary');
  try {
    const body = await api('/summary');
    const rows = body.portals.map((portal) => {
      const row = document.createElement('tr');
      row.dataset.memberId = portal.member_id;
      row.dataset.access = portal.access_problem || 'ok';
      const name = cell(portal.domain);
      const member = document.createElement('div');
      member.className = 'muted-small';
      member.textContent = portal.member_id;
      name.append(member);
      const chart = document.createElement('td');
      chart.append(delayChart(portal.minutes));
      row.append(
        name,
        cell(portal.installed ? 'yes' : portal.install_state),
        cell(accessText(portal), portal.access_problem ? 'problem' : ''),
        cell(localTime(portal.token_expires_at)),
        cell(localTime(portal.last_ping_sent_at)),
        cell(localTime(portal.last_ping_delivered_at)),
        cell(
          percentText(portal.success_rate) === null
            ? null
            : `${percentText(portal.success_rate)} of ${portal.pings_sent + portal.pings_failed}`
        ),
        cell(delayText(portal)),
        chart,
      );
      return row;
    });
    document.getElementById('summary-rows').replaceChildren(...rows);
    panel.dataset.state = 'ok';
    const { dropped, failed } = body.log;
    panel.querySelector('.panel-error').textContent = dropped || failed
      ? `This server lost ${dropped + failed} log rows (queue full or database failing).`
      : '';
  } catch (error) {
    panel.dataset.state = 'error';
    panel.querySelector('.panel-error').textContent =
      `Summary unavailable: ${describeError(error)}`;
    if (error instanceof TokenRefused) {
      throw error;
    }
  }
}

// The log.

/** Return one log row as a table row. */
function eventRow(entry) {
  const row = document.createElement('tr');
  row.dataset.id = String(entry.id);
  row.dataset.kind = entry.kind;
  row.dataset.outcome = entry.outcome;
  const details = Object.keys(entry.details || {}).length ? JSON.stringify(entry.details) : '';
  const detailsCell = cell(details, 'details');
  detailsCell.title = details;
  row.append(
    cell(localTime(entry.occurred_at)),
    cell(entry.domain || entry.member_id || '(backend)'),
    cell(entry.kind),
    cell(entry.outcome, `outcome outcome-${entry.outcome}`),
    cell(entry.message, 'message'),
    detailsCell,
  );
  return row;
}

/** Show the page of the log that starts at `cursor` (null: the newest). */
async function loadEvents(cursor) {
  const params = filterParams();
  if (cursor) {
    params.set('before', cursor);
  }
  const body = await api('/events', params);
  view.cursor = cursor;
  view.nextCursor = body.next;
  document.getElementById('event-rows').replaceChildren(...body.rows.map(eventRow));
  document.getElementById('older-page').disabled = !body.next;
  document.getElementById('newest-page').disabled = !cursor;
  if (!cursor) {
    view.newestId = body.rows.reduce((highest, entry) => Math.max(highest, entry.id), 0);
  }
}

/** Put rows from the live tail at the top of the newest page. */
function showLiveRows(rows) {
  window.adminTail.received.push(...rows);
  for (const entry of rows) {
    view.newestId = Math.max(view.newestId, entry.id);
  }
  if (view.cursor) {
    // On an older page the rows would be out of place; the Newest button brings them.
    document.getElementById('tail-status').textContent =
      `live, ${window.adminTail.received.length} new rows on the newest page`;
    return;
  }
  const body = document.getElementById('event-rows');
  for (const entry of rows) {
    body.prepend(eventRow(entry));
  }
  while (body.rows.length > MAX_LIVE_ROWS) {
    body.lastElementChild.remove();
  }
}

// The live tail.

function setTailStatus(state, text) {
  document.body.dataset.tail = state;
  document.getElementById('tail-status').textContent = text;
}

/** Open the live tail for the current filter, after the newest row shown. */
function connectTail() {
  clearTimeout(view.reconnectTimer);
  if (view.socket) {
    view.socket.onclose = null;
    view.socket.close(1000, 'filter changed');
  }
  if (view.tailFinal) {
    return;
  }
  let params;
  try {
    params = filterParams();
  } catch {
    return;
  }
  const socket = new WebSocket(config.tailUrl);
  view.socket = socket;
  setTailStatus('connecting', 'connecting…');
  socket.onopen = () => {
    // The token goes in the first message: browsers cannot give a WebSocket an Authorization
    // header, and URLs end up in access logs.
    socket.send(JSON.stringify({
      token: config.token,
      filter: filterObject(params),
      after: view.newestId,
    }));
  };
  socket.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === 'ready') {
      setTailStatus('live', 'live');
    } else if (message.type === 'rows' && Array.isArray(message.rows)) {
      showLiveRows(message.rows);
    }
  };
  socket.onclose = (event) => {
    if (view.socket !== socket) {
      return;
    }
    view.socket = null;
    if (FINAL_CLOSE_CODES.has(event.code)) {
      view.tailFinal = true;
      setTailStatus('closed', `stopped: ${event.reason || `code ${event.code}`}`);
      if (event.code === 4401) {
        setState('expired');
        showStatus(event.reason || 'The admin token has expired; reopen the admin page.',
          'error');
      }
      return;
    }
    setTailStatus('offline', 'offline, reconnecting…');
    view.reconnectTimer = setTimeout(connectTail, RECONNECT_DELAY_MS);
  };
}

// Export.

/** Download the rows the filters match as CSV or JSON. */
async function exportRows(format) {
  try {
    const params = filterParams();
    params.set('format', format);
    const response = await fetch(`${config.apiUrl}/export?${params}`, {
      headers: { Authorization: `Bearer ${config.token}` },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    const disposition = response.headers.get('Content-Disposition') || '';
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] || `event-log.${format}`;
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement('a');
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    showStatus(`Exported ${name}.`, 'ok');
  } catch (error) {
    showStatus(`Export failed: ${describeError(error)}`, 'error');
  }
}

// Wiring.

async function applyFilters(event) {
  event?.preventDefault();
  try {
    await loadEvents(null);
    showStatus('Showing the newest events.', 'ok');
    connectTail();
  } catch (error) {
    fail(error);
  }
}

async function olderPage() {
  try {
    await loadEvents(view.nextCursor);
    showStatus('Showing older events; Newest goes back to the newest.', 'ok');
  } catch (error) {
    fail(error);
  }
}

async function newestPage() {
  try {
    window.adminTail.received = [];
    await loadEvents(null);
    showStatus('Showing the newest events.', 'ok');
    setTailStatus(document.body.dataset.tail || 'live', 'live');
  } catch (error) {
    fail(error);
  }
}

function fail(error) {
  if (error instanceof TokenRefused) {
    view.tailFinal = true;
    view.socket?.close(1000, 'token refused');
    setState('expired');
  }
  showStatus(describeError(error), 'error');
}

async function start() {
  document.getElementById('filters').addEventListener('submit', applyFilters);
  document.getElementById('older-page').addEventListener('click', olderPage);
  document.getElementById('newest-page').addEventListener('click', newestPage);
  document.getElementById('export-csv').addEventListener('click', () => exportRows('csv'));
  document.getElementById('export-json').addEventListener('click', () => exportRows('json'));

  await Promise.all([loadSummary(), loadEvents(null)]);
  connectTail();
  setState('ready');
  showStatus(
    config.scope === 'operator'
      ? 'Every portal\'s events, newest first.'
      : 'This portal\'s events, newest first.',
    'ok',
  );
  setInterval(() => {
    loadSummary().catch(fail);
  }, SUMMARY_INTERVAL_MS);
}

start().catch((error) => {
  fail(error);
  if (!(error instanceof TokenRefused)) {
    setState('error');
  }
});
