// The parent side of the Bitrix24 frame protocol for a sandbox portal page.
//
// The app in the iframe sends "command[:json]:callbackId:APP_SID" with postMessage; the portal
// answers "callbackId:json" to the same window and origin. Tokens come from the sandbox's
// server side for every frame open, so they are never baked into the page.
(function () {
  "use strict";

  const page = document.body;
  const memberId = page.dataset.memberId;
  const userId = Number(page.dataset.userId);
  const isAdmin = page.dataset.isAdmin === "true";
  const appState = page.dataset.appState;
  const appOrigin = page.dataset.appOrigin;
  const logList = document.getElementById("message-log");
  const container = document.getElementById("frame-container");

  // The frame open now: its launch (APP_SID, init data) as the sandbox issued it.
  let current = null;

  function log(text, command) {
    const item = document.createElement("li");
    item.textContent = new Date().toISOString().slice(11, 19) + " " + text;
    if (command) {
      item.dataset.command = command;
    }
    logList.appendChild(item);
    logList.scrollTop = logList.scrollHeight;
  }

  function post(path, body) {
    return fetch("/portal/" + encodeURIComponent(memberId) + "/" + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          throw new Error(data.error_description || response.statusText);
        }
        return data;
      });
    });
  }

  // Open the app the way a portal does: a named iframe, then a form POST into it.
  function openFrame(launch) {
    current = launch;
    const frame = document.createElement("iframe");
    frame.id = "app-frame";
    frame.name = launch.iframe_name;
    frame.setAttribute("allow", "geolocation *; microphone *; camera *");
    container.replaceChildren(frame);

    const form = document.createElement("form");
    form.method = "POST";
    form.action = launch.url;
    form.target = launch.iframe_name;
    form.hidden = true;
    Object.entries(launch.form).forEach(function ([name, value]) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.appendChild(input);
    });
    document.body.appendChild(form);
    form.submit();
    form.remove();
    page.dataset.frame = launch.install ? "install" : "app";
    log("opened " + (launch.install ? "the install path" : "the handler path"));
  }

  function launch(install) {
    return post("frame", { user: userId, install: install })
      .then(openFrame)
      .catch(function (error) {
        log("could not open the app: " + error.message);
      });
  }

  function reply(event, callbackId, payload) {
    event.source.postMessage(callbackId + ":" + JSON.stringify(payload), event.origin);
  }

  // Split "command[:params]:callbackId:APP_SID"; the params JSON may itself hold colons.
  function parse(data) {
    if (typeof data !== "string") {
      return null;
    }
    const parts = data.split(":");
    if (parts.length < 3) {
      return null;
    }
    const appSid = parts.pop();
    const callbackId = parts.pop();
    const command = parts.shift();
    const text = parts.join(":");
    let params = {};
    if (text) {
      try {
        params = JSON.parse(text);
      } catch (error) {
        params = {};
      }
    }
    return { command: command, params: params, callbackId: callbackId, appSid: appSid };
  }

  function resize(params) {
    const frame = document.getElementById("app-frame");
    if (!frame || !params) {
      return;
    }
    ["width", "height"].forEach(function (side) {
      const value = params[side];
      if (typeof value === "number" && value > 0) {
        frame.style[side] = value + "px";
      } else if (typeof value === "string" && /^\d+(\.\d+)?(px|%)?$/.test(value)) {
        frame.style[side] = /\d$/.test(value) ? value + "px" : value;
      }
    });
  }

  function onMessage(event) {
    // A portal only listens to the registered app's origin and to the frame it opened last.
    if (!current || event.origin !== appOrigin) {
      return;
    }
    const message = parse(event.data);
    if (!message || message.appSid !== current.app_sid) {
      return;
    }
    const launched = current;
    log(message.command, message.command);

    switch (message.command) {
      case "getInitData":
        reply(event, message.callbackId, launched.init_data);
        break;
      case "refreshAuth":
        post("refresh-auth", { user: userId, app_sid: launched.app_sid })
          .then(function (tokens) {
            launched.init_data.AUTH_ID = tokens.AUTH_ID;
            launched.init_data.REFRESH_ID = tokens.REFRESH_ID;
            launched.init_data.AUTH_EXPIRES = tokens.AUTH_EXPIRES;
            reply(event, message.callbackId, tokens);
          })
          .catch(function (error) {
            log("refreshAuth failed: " + error.message);
          });
        break;
      case "setInstallFinish":
        if (!isAdmin || !launched.install) {
          // A portal ignores it from non-admins and outside the install path.
          log("setInstallFinish ignored");
          break;
        }
        post("install-finish", { user: userId, app_sid: launched.app_sid })
          .then(function () {
            reply(event, message.callbackId, {});
            log("installed; reloading the portal page");
            window.location.reload();
          })
          .catch(function (error) {
            log("setInstallFinish failed: " + error.message);
          });
        break;
      case "resizeWindow":
        resize(message.params);
        reply(event, message.callbackId, {});
        break;
      case "setTitle":
        if (message.params && typeof message.params.title === "string") {
          document.getElementById("app-title").textContent = message.params.title;
        }
        reply(event, message.callbackId, {});
        break;
      default:
        // setInstall and the rest: acknowledged, nothing more to do here.
        reply(event, message.callbackId, {});
    }
  }

  // Listen before any frame exists: the app asks for getInitData as soon as it loads.
  window.addEventListener("message", onMessage);

  const installButton = document.getElementById("install-button");
  if (installButton) {
    installButton.addEventListener("click", function () {
      launch(true);
    });
  }
  const openButton = document.getElementById("open-button");
  if (openButton) {
    openButton.addEventListener("click", function () {
      launch(false);
    });
  }

  // Not part of a portal: the sandbox's control of what is wrong with the portal.
  const conditionButton = document.getElementById("condition-button");
  conditionButton.addEventListener("click", function () {
    const condition = document.getElementById("condition-select").value || null;
    post("condition", { condition: condition })
      .then(function () {
        window.location.reload();
      })
      .catch(function (error) {
        log("Condition not set: " + error.message);
      });
  });

  if (appState === "installed") {
    launch(null);
  }
})();
