// The install page: bind the app's lifecycle events, then tell the portal the install is done.

import {
  callPortal,
  createLogger,
  describeError,
  initializeFrame,
  isAlreadyBound,
  readPageConfig,
  setState,
  showStatus,
  stopIfOutsidePortal,
} from './frame.js';

const LIFECYCLE_EVENTS = ['ONAPPINSTALL', 'ONAPPUNINSTALL'];

const config = readPageConfig();
const logger = createLogger('b24app.install', config);

/** Add a line to the visible list of install steps and return a function to settle it. */
function startStep(name, text) {
  const item = document.createElement('li');
  item.dataset.step = name;
  item.dataset.result = 'running';
  item.textContent = `${text}…`;
  document.getElementById('steps').append(item);

  return (result, detail) => {
    item.dataset.result = result;
    item.textContent = detail ? `${text}: ${detail}` : text;
  };
}

/** Bind one lifecycle event to the backend; a binding left from an earlier install is fine. */
async function bindEvent(b24, eventName) {
  const settle = startStep(`bind-${eventName}`, `Bind ${eventName}`);
  try {
    await callPortal(b24, 'event.bind', { event: eventName, handler: config.eventHandlerUrl });
    settle('ok', 'done');
  } catch (error) {
    if (!isAlreadyBound(error)) {
      settle('error', describeError(error));
      throw error;
    }
    settle('ok', 'already bound');
  }
  await logger.info('Event bound', { event: eventName, memberId: config.memberId });
}

async function install() {
  setState('connecting');
  showStatus('Connecting to the portal…');
  const settleConnect = startStep('connect', 'Connect to the portal');
  let b24;
  try {
    b24 = await initializeFrame();
  } catch (error) {
    settleConnect('error', describeError(error));
    throw error;
  }
  settleConnect('ok', 'done');

  // Only an administrator may bind events and finish the install; say so up front.
  if (!b24.auth.isAdmin) {
    setState('error');
    showStatus('Only a portal administrator can finish installing this app.', 'error');
    return;
  }

  setState('installing');
  showStatus('Installing…');
  for (const eventName of LIFECYCLE_EVENTS) {
    await bindEvent(b24, eventName);
  }

  if (!b24.isInstallMode) {
    setState('installed');
    showStatus('The app is already installed; the event handlers are bound.', 'ok');
    return;
  }
  const settleFinish = startStep('finish', 'Finish the install');
  try {
    await b24.installFinish();
  } catch (error) {
    settleFinish('error', describeError(error));
    throw error;
  }
  settleFinish('ok', 'done');
  await logger.info('Install finished', { memberId: config.memberId });

  setState('finished');
  showStatus('Installed. The portal now opens the app.', 'ok');
}

if (!stopIfOutsidePortal()) {
  install().catch(async (error) => {
    setState('error');
    showStatus(`Install failed: ${describeError(error)}`, 'error');
    await logger.error('Install failed', { error: describeError(error) });
  });
}
