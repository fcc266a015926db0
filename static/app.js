// The app page: subscribe to the app's Pull channel, show each ping as it arrives, send pings
// from the browser, and show what the backend knows about this portal.

import {
  callPortal,
  createLogger,
  describeError,
  ensureLocalStorage,
  initializeFrame,
  readPageConfig,
  setState,
  showStatus,
  stopIfOutsidePortal,
} from './frame.js';

const MAX_ROWS = 50;
// window.appPings is for tests and debugging; a page left open for hours must not grow forever.
const MAX_KEPT_MESSAGES = 1000;
// The backend status follows the scheduler's pings, but is fetched at most this often; with
// no pings arriving it is still refreshed now and then.
const STATUS_MIN_INTERVAL_MS = 2000;
const STATUS_IDLE_INTERVAL_MS = 30000;

const config = readPageConfig();
const logger = createLogger('b24app.app', config);
const { Text } = window.B24Js;

const PULL_STATUS_TEXT = {
  online: 'connected',
  connect: 'connecting…',
  offline: 'offline, retrying',
  unknown: 'started',
};

/** The backend refused the page's token (missing, forged or expired): retrying cannot help. */
class TokenRefused extends Error {}

let b24 = null;
let pingCount = 0;
let statusFetchedAt = 0;
let statusTokenRefused = false;
window.appPings = [];

/** Return a table cell holding `text` as plain text. */
function cell(text) {
  const element = document.createElement('td');
  element.textContent = text === undefined || text === null ? '—' : String(text);
  return element;
}

/** Return how long ago, in whole milliseconds, a message sent at `sentAt` (unix s) was sent. */
function delaySince(sentAt) {
  const seconds = Number(sentAt);
  if (sentAt === undefined || sentAt === null || !Number.isFinite(seconds)) {
    return null;
  }
  return Math.round(Date.now() - seconds * 1000);
}

/** Show one Pull message at the top of the table, keeping only the newest rows. */
function showMessage(message) {
  const params = message.params || {};
  const delay = delaySince(params.sent_at);
  const row = document.createElement('tr');
  row.dataset.command = String(message.command);
  row.dataset.sequence = params.sequence ?? '';
  row.dataset.source = params.source ?? '';
  row.dataset.param1 = params.param_1 ?? '';
  row.append(
    cell(Text.getDateForLog()),
    cell(message.command),
    cell(params.param_1),
    cell(params.sequence),
    cell(params.source),
    cell(delay === null ? null : `${delay} ms`),
  );

  const body = document.getElementById('ping-rows');
  body.prepend(row);
  while (body.rows.length > MAX_ROWS) {
    body.lastElementChild.remove();
  }
}

/** Handle a message from the subscription: keep it, count it if a ping, and show it. */
function receiveMessage(message) {
  window.appPings.push(message);
  if (window.appPings.length > MAX_KEPT_MESSAGES) {
    window.appPings.shift();
  }
  if (message.command === 'ping') {
    pingCount += 1;
    document.getElementById('ping-count').textContent = String(pingCount);
  }
  if (message.params?.source === 'scheduler') {
    refreshBackendStatus();
    if (message.command === 'ping') {
      acknowledgePing(message.params);
    }
  }
  showMessage(message);
  logger.debug('Pull message received', {
    command: message.command,
    sequence: message.params?.sequence,
  });
}

/**
 * Tell the backend that a scheduler ping arrived, so that its log knows the delivery delay.
 *
 * Only the ping's signed receipt goes back; the backend measures the delay on its own clock.
 * A failed acknowledgement costs a row in the log, never the page its pings.
 */
async function acknowledgePing(params) {
  if (statusTokenRefused || typeof params.receipt !== 'string') {
    return;
  }
  try {
    const response = await fetch(`${config.apiUrl}/ping-delivered`, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${config.apiToken}`,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify({ receipt: params.receipt }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      logger.debug('Ping acknowledgement refused', { status: response.status, error: body.error });
    }
  } catch (error) {
    logger.debug('Ping acknowledgement failed', { error: describeError(error) });
  }
}

/** Open the admin page (the event log) in the portal's slider, as the app with view=admin. */
async function openAdminPage() {
  try {
    await b24.slider.openSliderAppPage({ view: 'admin', bx24_title: 'Event log' });
  } catch (error) {
    showStatus(`Could not open the event log: ${describeError(error)}`, 'error');
  }
}

/** Send a ping from the browser; it comes back through the same Pull subscription. */
async function sendPing() {
  const button = document.getElementById('send-ping');
  button.disabled = true;
  try {
    await callPortal(b24, 'pull.application.event.add', {
      COMMAND: 'ping',
      MODULE_ID: config.moduleId,
      PARAMS: { param_1: Text.getDateForLog(), source: 'browser', sent_at: Date.now() / 1000 },
    });
    showStatus('Ping sent from the browser.', 'ok');
  } catch (error) {
    showStatus(`Could not send a ping: ${describeError(error)}`, 'error');
    await logger.error('Browser ping failed', { error: describeError(error) });
  } finally {
    button.disabled = false;
  }
}

/** Fill the backend status panel from GET {apiUrl}/status. */
async function fetchBackendStatus() {
  const panel = document.getElementById('backend-status');
  try {
    const response = await fetch(`${config.apiUrl}/status`, {
      headers: { Authorization: `Bearer ${config.apiToken}`, Accept: 'application/json' },
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      throw new TokenRefused(body.error || 'the page token was refused');
    }
    if (!response.ok) {
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    for (const [key, value] of Object.entries(body)) {
      const field = panel.querySelector(`[data-field="${key}"]`);
      if (field) {
        field.textContent = value === null || value === undefined ? '—' : String(value);
      }
    }
    panel.dataset.state = 'ok';
    panel.querySelector('.panel-error').textContent = '';
  } catch (error) {
    // A refused token stays refused, so asking again would only repeat the error.
    statusTokenRefused = error instanceof TokenRefused;
    panel.dataset.state = 'error';
    // The backend's refusal already says what to do.
    panel.querySelector('.panel-error').textContent =
      `Backend status unavailable: ${describeError(error)}`;
  }
}

/** Refresh the backend status unless it was fetched a moment ago or the token was refused. */
function refreshBackendStatus() {
  if (statusTokenRefused || Date.now() - statusFetchedAt < STATUS_MIN_INTERVAL_MS) {
    return;
  }
  statusFetchedAt = Date.now();
  fetchBackendStatus();
}

/**
 * Show the push connection's state on <body data-pull> and in the page.
 *
 * The helper neither exposes its Pull client nor reports connection changes, and it swallows
 * start errors. The client itself emits them, so this reaches the helper's field (present in
 * SDK 2.2.0); without it, the state stays "unknown" and nothing else changes.
 */
function watchPullStatus(helper) {
  const pullClient = helper._b24PullClient;
  const label = document.getElementById('pull-status');
  const show = (status) => {
    document.body.dataset.pull = status;
    label.textContent = PULL_STATUS_TEXT[status] ?? status;
  };
  if (typeof pullClient?.subscribe !== 'function') {
    show('unknown');
    return;
  }
  show('connect');
  pullClient.subscribe({
    type: window.B24Js.SubscriptionType.Status,
    callback: (data) => {
      show(String(data.status));
      logger.debug('Pull status', { status: data.status });
    },
  });
}

async function start() {
  setState('connecting');
  showStatus('Connecting to the portal…');
  b24 = await initializeFrame();

  setState('loading');
  showStatus('Loading the app and user data…');
  const {
    initB24Helper, getB24Helper, usePullClient, useSubscribePullClient, startPullClient,
  } = window.B24Js.useB24Helper();
  await initB24Helper(b24);

  if (!ensureLocalStorage()) {
    await logger.notice('localStorage is blocked here; the Pull client keeps its cache in memory');
  }
  // The scheduler sends with exactly this module id, so the subscription must match it.
  usePullClient();
  useSubscribePullClient(receiveMessage, config.moduleId);
  watchPullStatus(getB24Helper());
  startPullClient();

  document.getElementById('send-ping').disabled = false;
  document.getElementById('open-admin').disabled = false;
  setState('ready');
  showStatus(`Listening for pings on module "${config.moduleId}".`, 'ok');
  await logger.info('Pull client started', { memberId: config.memberId });
}

if (!stopIfOutsidePortal()) {
  document.getElementById('send-ping').addEventListener('click', sendPing);
  const adminButton = document.getElementById('open-admin');
  // The backend asked the portal; the button only saves others a refusal.
  adminButton.hidden = config.isAdmin !== true;
  adminButton.addEventListener('click', openAdminPage);
  refreshBackendStatus();
  setInterval(refreshBackendStatus, STATUS_IDLE_INTERVAL_MS);
  start().catch(async (error) => {
    setState('error');
    showStatus(describeError(error), 'error');
    await logger.error('App start failed', { error: describeError(error) });
  });
}
