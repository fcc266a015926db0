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
  const sliderContainer = document.getElementById("slider-container");

  // The frames open now (the page's and the slider's), by APP_SID: their launches (init data)
  // as the sandbox issued them.
  const openLaunches = new Map();
  const frameSlots = { main: null, slider: null };

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

  // Open the app the way a portal does: a named iframe, then a form POST into it. The slider
  // is the side panel that openApplication opens over the page.
  function openFrame(launch, slot = "main") {
    if (frameSlots[slot]) {
      openLaunches.delete(frameSlots[slot].app_sid);
    }
    frameSlots[slot] = launch;
    openLaunches.set(launch.app_sid, launch);
    const frame = document.createElement("iframe");
    frame.id = slot === "slider" ? "slider-frame" : "app-frame";
    frame.name = launch.iframe_name;
    frame.setAttribute("allow", "geolocation *; microphone *; camera *");
    (slot === "slider" ? sliderContainer : container).replaceChildren(frame);
    if (slot === "slider") {
      sliderContainer.hidden = false;
      document.getElementById("slider").hidden = false;
    }

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
    if (slot === "main") {
      page.dataset.frame = launch.install ? "install" : "app";
    }
    log(
      "opened " + (launch.install ? "the install path" : "the handler path") +
      (slot === "slider" ? " in the slider" : "")
    );
  }

  function launch(install) {
    return post("frame", { user: userId, install: install })
      .then(function (opened) {
        openFrame(opened);
      })
      .catch(function (error) {
        log("could not open the app: " + error.message);
      });
  }

  // openApplication: the app again, in the slider, with the caller's parameters as its
  // PLACEMENT_OPTIONS (the bx24_ keys are the slider's own settings).
  function openSlider(params) {
    const options = {};
    Object.entries(params || {}).forEach(function ([key, value]) {
      if (!key.startsWith("bx24_")) {
        options[key] = value;
      }
    });
    return post("frame", { user: userId, install: false, placement_options: options })
      .then(function (opened) {
        openFrame(opened, "slider");
      });
  }

  function closeSlider() {
    if (frameSlots.slider) {
      openLaunches.delete(frameSlots.slider.app_sid);
      frameSlots.slider = null;
    }
    sliderContainer.replaceChildren();
    document.getElementById("slider").hidden = true;
    log("closed the slider");
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
    // A portal only listens to the registered app's origin and to the frames it has open.
    if (event.origin !== appOrigin) {
      return;
    }
    const message = parse(event.data);
    const launched = message && openLaunches.get(message.appSid);
    if (!launched) {
      return;
    }
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
      case "openApplication":
        openSlider(message.params)
          .then(function () {
            reply(event, message.callbackId, {});
          })
          .catch(function (error) {
            log("openApplication failed: " + error.message);
          });
        break;
      case "closeApplication":
        if (frameSlots.slider && launched === frameSlots.slider) {
          closeSlider();
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

  // The portal's own entry for the app's admin page, as a menu item bound to it would be.
  const adminButton = document.getElementById("open-admin-button");
  if (adminButton) {
    adminButton.addEventListener("click", function () {
      openSlider({ view: "admin" }).catch(function (error) {
        log("could not open the admin page: " + error.message);
      });
    });
  }
  document.getElementById("close-slider").addEventListener("click", closeSlider);

  if (appState === "installed") {
    launch(null);
  }
})();
