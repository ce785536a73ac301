// The customer's tracking page. The token is the last part of the page's own URL
// (/track/<token>). The page asks GET /api/v1/track/<token> once (that answer tells a
// dead link apart), then follows /ws/track/<token>, whose `track` messages carry the
// same object, and reconnects with backoff when the socket drops.
// Everything shown goes through textContent: nothing from the server becomes markup.
"use strict";

(function () {
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const CLOSE_EXPIRED = 4001;
  const STEPS = ["scheduled", "en_route", "approaching", "arrived", "delivered"];
  const HEADLINES = {
    scheduled: "Your parcel is scheduled",
    en_route: "Your parcel is on its way",
    approaching: "Your driver is nearby",
    arrived: "Your driver has arrived",
    delivered: "Delivered",
    failed: "We could not deliver your parcel",
    cancelled: "This delivery was cancelled",
  };
  const FINAL = new Set(["delivered", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const token = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");

  let view = null;
  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let finished = false;

  // --- times, in the fleet's zone (the one the window was agreed in) -------------

  function formatter(timeZone, options) {
    try {
      return new Intl.DateTimeFormat(undefined, Object.assign({ timeZone }, options));
    } catch (e) {
      return new Intl.DateTimeFormat(undefined, options);
    }
  }

  function clock(iso, tz) {
    return formatter(tz, { hour: "2-digit", minute: "2-digit" }).format(new Date(iso));
  }

  function day(iso, tz) {
    return formatter(tz, { weekday: "short", day: "numeric", month: "short" }).format(new Date(iso));
  }

  function sameDay(a, b, tz) {
    return day(a, tz) === day(b, tz);
  }

  function minutesFromNow(iso) {
    return Math.round((new Date(iso).getTime() - Date.now()) / 60000);
  }

  function relative(iso) {
    const minutes = minutesFromNow(iso);
    if (minutes <= 0) return "any minute now";
    if (minutes < 60) return `in about ${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return `in about ${hours} h ${minutes % 60} min`;
  }

  function ago(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    return `${Math.round(seconds / 60)} min ago`;
  }

  // --- rendering ------------------------------------------------------------------

  function text(id, value) {
    const el = $(id);
    if (el.textContent !== value) el.textContent = value;
  }

  function render(next) {
    view = next;
    app.dataset.state = view.state;
    app.dataset.revealed = view.revealed ? "yes" : "no";
    app.removeAttribute("aria-busy");
    const tz = view.timezone;
    text("headline", HEADLINES[view.state] || view.state);

    const eta = $("eta");
    if (view.eta) {
      text("eta", clock(view.eta.p50, tz));
      eta.dataset.p50 = view.eta.p50;
      text("eta-in", relative(view.eta.p50));
      text("eta-range", `Expected between ${clock(view.eta.p50, tz)} and ${clock(view.eta.p90, tz)}`);
    } else {
      text("eta", view.state === "scheduled" ? "—" : "");
      eta.dataset.p50 = "";
      text("eta-in", "");
      text("eta-range", view.state === "scheduled" ? "The arrival time appears once your driver sets off." : "");
    }

    const w = view.window;
    let windowText = `Delivery window ${clock(w.start, tz)}–${clock(w.end, tz)}`;
    if (!sameDay(w.start, new Date().toISOString(), tz)) windowText += `, ${day(w.start, tz)}`;
    text("window", windowText);
    $("late").hidden = !view.late_risk;

    renderProgress();
    if (view.stops_before === null || FINAL.has(view.state) || view.state === "arrived") {
      text("stops", "");
    } else if (view.stops_before === 0) {
      text("stops", "You are the driver's next stop.");
    } else {
      const n = view.stops_before;
      text("stops", `${n} ${n === 1 ? "stop" : "stops"} before yours.`);
    }

    const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    text("zone-note", localZone === tz ? "" : `Times are shown in ${tz} time.`);
    drawMap();
  }

  function renderProgress() {
    const failed = view.state === "failed" || view.state === "cancelled";
    const at = failed ? -1 : STEPS.indexOf(view.state);
    for (const li of $("progress").children) {
      const i = STEPS.indexOf(li.dataset.step);
      li.classList.toggle("done", at >= 0 && i < at);
      li.classList.toggle("current", at >= 0 && i === at);
      li.classList.toggle("bad", failed && i === STEPS.length - 1);
      if (i === at) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    }
    const last = $("progress").lastElementChild.firstElementChild;
    last.textContent = view.state === "failed" ? "Not delivered" : view.state === "cancelled" ? "Cancelled" : "Delivered";
  }

  // --- the map: plain canvas, no tiles (nothing leaves this server) -----------------

  const M_PER_DEG = 111320;

  function drawMap() {
    const card = $("map-card");
    const canvas = $("map");
    const dest = view && view.destination;
    const showVehicle = view && (view.position || view.area);
    if (!view || FINAL.has(view.state) || !showVehicle) {
      card.hidden = true;
      return;
    }
    card.hidden = false;
    const rect = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(rect.width));
    const height = Math.max(1, Math.round(rect.height));
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const css = getComputedStyle(document.documentElement);
    const colour = (name) => css.getPropertyValue(name).trim();

    // Everything to fit, as [lon, lat].
    const points = [[dest.lon, dest.lat]];
    if (dest.radius_m) {
      const dLat = dest.radius_m / M_PER_DEG;
      const dLon = dLat / Math.cos((dest.lat * Math.PI) / 180);
      points.push([dest.lon - dLon, dest.lat - dLat], [dest.lon + dLon, dest.lat + dLat]);
    }
    for (const polygon of dest.zone || []) for (const p of polygon[0]) points.push(p);
    if (view.position) points.push([view.position.lon, view.position.lat]);
    if (view.area) for (const p of view.area.boundary) points.push(p);

    let minLon = Infinity, maxLon = -Infinity, minLat = Infinity, maxLat = -Infinity;
    for (const [lon, lat] of points) {
      minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
      minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    }
    const midLat = (minLat + maxLat) / 2;
    const kx = Math.cos((midLat * Math.PI) / 180);
    // At least 300 m across, so a van at the door is not drawn on top of the pin.
    const spanX = Math.max((maxLon - minLon) * kx, 300 / M_PER_DEG);
    const spanY = Math.max(maxLat - minLat, 300 / M_PER_DEG);
    const pad = 28;
    const scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
    const cx = ((minLon + maxLon) / 2) * kx;
    const cy = (minLat + maxLat) / 2;
    const project = ([lon, lat]) => [width / 2 + (lon * kx - cx) * scale, height / 2 - (lat - cy) * scale];
    const metres = (m) => (m / M_PER_DEG) * scale;

    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = colour("--map-bg");
    ctx.fillRect(0, 0, width, height);
    drawGrid(ctx, width, height, scale, colour("--map-grid"), colour("--muted"));

    if (view.area) {
      ctx.beginPath();
      view.area.boundary.forEach((p, i) => {
        const [x, y] = project(p);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.closePath();
      ctx.fillStyle = colour("--area");
      ctx.fill();
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = colour("--area-edge");
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.setLineDash([]);
    }

    // The drop zone, then the destination pin.
    ctx.fillStyle = colour("--dest") + "22";
    ctx.strokeStyle = colour("--dest");
    ctx.lineWidth = 1.5;
    if (dest.zone) {
      for (const polygon of dest.zone) {
        ctx.beginPath();
        for (const ring of polygon) {
          ring.forEach((p, i) => {
            const [x, y] = project(p);
            if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
          });
          ctx.closePath();
        }
        ctx.fill("evenodd");
        ctx.stroke();
      }
    } else if (dest.radius_m) {
      const [x, y] = project([dest.lon, dest.lat]);
      ctx.beginPath();
      ctx.arc(x, y, Math.max(4, metres(dest.radius_m)), 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    }
    drawPin(ctx, project([dest.lon, dest.lat]), colour("--dest"));

    if (view.position) {
      drawVehicle(ctx, project([view.position.lon, view.position.lat]), view.position.heading, colour("--vehicle"));
      text("map-note", `Your driver, seen ${ago(view.position.ts)}.`);
    } else {
      text("map-note", "Your driver is somewhere in the shaded area; the exact position shows when they are close.");
    }
  }

  function drawGrid(ctx, width, height, scale, line, label) {
    // A grid of round distances, and a scale bar: the only sense of size without tiles.
    const target = 80 / scale * M_PER_DEG;
    const steps = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
    const step = steps.find((s) => s >= target) || steps[steps.length - 1];
    const px = (step / M_PER_DEG) * scale;
    ctx.strokeStyle = line;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let x = (width / 2) % px; x < width; x += px) { ctx.moveTo(x, 0); ctx.lineTo(x, height); }
    for (let y = (height / 2) % px; y < height; y += px) { ctx.moveTo(0, y); ctx.lineTo(width, y); }
    ctx.stroke();
    ctx.fillStyle = label;
    ctx.strokeStyle = label;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(10, height - 12); ctx.lineTo(10 + px, height - 12);
    ctx.stroke();
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(step >= 1000 ? `${step / 1000} km` : `${step} m`, 12, height - 17);
  }

  function drawPin(ctx, [x, y], fill) {
    ctx.save();
    ctx.fillStyle = fill;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.bezierCurveTo(x - 12, y - 14, x - 9, y - 26, x, y - 26);
    ctx.bezierCurveTo(x + 9, y - 26, x + 12, y - 14, x, y);
    ctx.fill();
    ctx.stroke();
    ctx.beginPath();
    ctx.fillStyle = "#ffffff";
    ctx.arc(x, y - 18, 3.5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.restore();
  }

  function drawVehicle(ctx, [x, y], heading, fill) {
    ctx.save();
    ctx.fillStyle = fill + "33";
    ctx.beginPath();
    ctx.arc(x, y, 18, 0, 2 * Math.PI);
    ctx.fill();
    if (typeof heading === "number") {
      ctx.translate(x, y);
      ctx.rotate((heading * Math.PI) / 180);
      ctx.fillStyle = fill;
      ctx.beginPath();
      ctx.moveTo(0, -22); ctx.lineTo(6, -11); ctx.lineTo(-6, -11);
      ctx.closePath();
      ctx.fill();
    }
    ctx.restore();
    ctx.save();
    ctx.fillStyle = fill;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.arc(x, y, 8, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    ctx.restore();
  }

  // --- connection -------------------------------------------------------------------

  function status(message, live) {
    text("connection", message);
    $("connection").dataset.live = live ? "yes" : "no";
  }

  function gone() {
    finished = true;
    app.dataset.state = "gone";
    app.removeAttribute("aria-busy");
    $("gone").hidden = false;
    status("", false);
    if (socket) socket.close();
  }

  function scheduleRetry(delayMs) {
    if (finished || retryTimer !== null) return;
    const backoff = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** attempts);
    const wait = delayMs !== undefined ? delayMs : backoff / 2 + Math.random() * (backoff / 2);
    attempts += 1;
    status(`Reconnecting in ${Math.ceil(wait / 1000)} s…`, false);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      start();
    }, wait);
  }

  async function start() {
    // The REST answer tells an expired link (404) or a busy server (429) apart, which
    // a refused websocket cannot.
    let response;
    try {
      response = await fetch(`/api/v1/track/${encodeURIComponent(token)}`, {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (e) {
      scheduleRetry();
      return;
    }
    if (response.status === 404) {
      gone();
      return;
    }
    if (response.status === 429) {
      const after = parseInt(response.headers.get("Retry-After") || "", 10);
      scheduleRetry(Number.isFinite(after) ? after * 1000 : undefined);
      return;
    }
    if (!response.ok) {
      scheduleRetry();
      return;
    }
    render(await response.json());
    if (!FINAL.has(view.state)) connect();
    else status("", false);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/track/${encodeURIComponent(token)}`);
    socket = ws;
    ws.onopen = () => {
      attempts = 0;
      status("Live", true);
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (message.type === "track") render(message.delivery);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (event.code === CLOSE_EXPIRED) {
        gone();
      } else if (view && FINAL.has(view.state)) {
        status("", false);
      } else {
        scheduleRetry();
      }
    };
  }

  // Phones freeze background tabs: come back at once rather than after the backoff.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !socket && !finished && retryTimer !== null) {
      clearTimeout(retryTimer);
      retryTimer = null;
      attempts = 0;
      start();
    }
  });
  window.addEventListener("resize", () => view && drawMap());
  // Relative times ("in about 12 min", "seen 30 s ago") age without any message.
  setInterval(() => {
    if (!view) return;
    if (view.eta) text("eta-in", relative(view.eta.p50));
    if (view.position) text("map-note", `Your driver, seen ${ago(view.position.ts)}.`);
  }, 15000);

  if (!token) gone();
  else start();
})();
