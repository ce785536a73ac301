// The dispatch page: the live fleet on a map, the geofences, the alert feed and the
// panel of the selected device. Opened as /dispatch#token=<bearer token>; the token is
// kept in this browser's localStorage and taken out of the address bar.
//
// `window.fleetpulse` exposes the page's state (devices, alerts, drawing times) for
// people debugging a deployment and for the browser tests.

/* global L */

import { DeviceStore, FleetLayer } from "./fleet-layer.js";
import { Fences, setUpBasemap } from "./dispatch-map.js";
import { AlertFeed } from "./dispatch-feed.js";
import { DevicePanel } from "./dispatch-panel.js";
import { LiveStream } from "./dispatch-live.js";

const TOKEN_KEY = "fleetpulse.token";
const VIEW_KEY = "fleetpulse.view";
const FILTER_MIN_ZOOM = 13; // zoomed in this far, the stream is limited to the view
const FILTER_PAD = 0.5; // of the view's size, on each side
const FILTER_DELAY_MS = 500;
const FENCES_REFRESH_MS = 60000;
const STATUS_REFRESH_MS = 1000;
const TOAST_MS = 6000;

const $ = (id) => document.getElementById(id);

function takeTokenFromUrl() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token");
  const view = hash.get("view");
  if (token) {
    localStorage.setItem(TOKEN_KEY, token);
    hash.delete("token");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return { token: localStorage.getItem(TOKEN_KEY), view };
}

function askForToken(message) {
  const overlay = $("token-form");
  overlay.hidden = false;
  const error = $("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  overlay.querySelector("form").onsubmit = (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    localStorage.setItem(TOKEN_KEY, value);
    location.reload();
  };
  $("token-input").focus();
}

let toastTimer = null;
function toast(text) {
  const node = $("toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, TOAST_MS);
}

function makeMap() {
  const map = L.map("map", { zoomControl: true, preferCanvas: true, minZoom: 2 });
  map.createPane("roadsPane").style.zIndex = 250; // above tiles, below fences
  const fleetPane = map.createPane("fleetPane");
  fleetPane.style.zIndex = 450; // above fences and the trail
  fleetPane.style.pointerEvents = "none"; // clicks go to the map, which picks
  L.control.scale({ imperial: false }).addTo(map);
  return map;
}

function initialView(map, hashView, ...candidates) {
  const parts = (hashView || "").split(",").map(Number);
  if (parts.length === 3 && parts.every(Number.isFinite)) {
    map.setView([parts[0], parts[1]], parts[2]);
    return true;
  }
  try {
    const saved = JSON.parse(localStorage.getItem(VIEW_KEY) || "null");
    if (saved) {
      map.setView([saved.lat, saved.lon], saved.zoom);
      return true;
    }
  } catch { /* a damaged saved view is just not used */ }
  for (const bounds of candidates) {
    if (bounds && bounds.isValid()) {
      map.fitBounds(bounds);
      return true;
    }
  }
  map.setView([20, 0], 2);
  return false;
}

async function boot() {
  const params = new URLSearchParams(location.search);
  const benchDevices = Number(params.get("bench") || 0);
  const { token, view } = takeTokenFromUrl();
  const map = makeMap();
  const store = new DeviceStore();
  const layer = new FleetLayer(store).addTo(map);
  const etas = new Map();
  const page = {
    map, store, layer, etas, ready: false, basemap: { mode: "plain" },
    devices: store,
    device: (id) => store.get(id),
    screenPoint: (id) => {
      const state = store.get(id);
      if (!state) return null;
      const p = map.latLngToContainerPoint([state.lat, state.lon]);
      const box = map.getContainer().getBoundingClientRect();
      return { x: p.x + box.left, y: p.y + box.top };
    },
    stats: () => ({ draw: { ...layer.stats }, stream: page.stream ? { ...page.stream.stats } : null,
      devices: store.size }),
  };
  window.fleetpulse = page;

  if (benchDevices > 0) {
    const { runBench } = await import("./dispatch-bench.js");
    $("basemap-mode").textContent = "benchmark";
    startStatusLoop(page);
    page.ready = true;
    page.bench = await runBench({ page, n: benchDevices, params });
    return;
  }
  if (!token) {
    askForToken();
    return;
  }
  $("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  let refused = false;
  const api = async (path) => {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    if (resp.status === 401 && !refused) {
      refused = true;
      const detail = await resp.clone().json().then((p) => p.detail, () => "");
      localStorage.removeItem(TOKEN_KEY);
      if (page.stream) page.stream.stop();
      askForToken(`The token was refused: ${detail || "unknown or revoked"}`);
    }
    return resp;
  };

  const fences = new Fences(map, api);
  page.fences = fences;
  const [basemap] = await Promise.all([setUpBasemap(map, api), fences.load()]);
  if (refused) return;
  page.basemap = basemap;
  $("basemap-mode").textContent = {
    tiles: "tiles", roads: "roads from OpenStreetMap", plain: "plain background",
  }[basemap.mode] + (basemap.error ? ` (base map unavailable: ${basemap.error})` : "");
  if (basemap.mode === "plain") map.getContainer().classList.add("plain");
  if (basemap.mode === "roads") map.getContainer().classList.add("roads");

  if (fences.error) toast(`Geofences unavailable: ${fences.error}`);
  setInterval(() => fences.load(), FENCES_REFRESH_MS);
  let placed = initialView(map, view, basemap.bounds, fences.bounds());
  if (basemap.roads) basemap.roads.refresh();

  const panel = new DevicePanel({ map, api, store, layer, etas, root: $("panel") });
  page.panel = panel;
  const select = (id) => panel.open(id);

  const stream = new LiveStream({
    token,
    onMessage: (message) => receive(message),
    onState: (state, retryInMs) => {
      const node = $("connection");
      node.dataset.state = state === "live" ? "live" : "down";
      $("connection-text").textContent = retryInMs
        ? `${state} in ${(retryInMs / 1000).toFixed(1)} s` : state;
      if (state !== "live" && stream.stats.connects === 0 && stream.attempts === 1) {
        // a refused websocket says nothing: ask over HTTP whether it is the token
        api("/api/v1/basemap").catch(() => {});
      }
    },
  });
  page.stream = stream;

  const feed = new AlertFeed({
    list: $("alerts"), empty: $("feed-empty"), more: $("feed-more"), unacked: $("unacked"),
    filter: $("feed-filter"),
    fenceName: (id) => fences.nameOf(id),
    onAck: (eventId) => stream.send({ type: "ack", event_id: eventId }),
    onSelect: (event) => {
      if (event.lat != null) map.panTo([event.lat, event.lon]);
      select(event.device_id);
    },
  });
  page.feed = feed;
  page.alerts = () => feed.snapshot();

  function receive(message) {
    switch (message.type) {
      case "snapshot": {
        store.replaceAll(message.devices || []);
        feed.reconcile(message.alerts || []);
        for (const alert of message.alerts || []) feed.add(alert);
        if (!placed && store.size) {
          placed = initialView(map, null, L.latLngBounds(store.bounds()));
        }
        layer.redraw();
        panel.render();
        break;
      }
      case "positions":
        for (const state of message.devices || []) {
          if (store.upsert(state) >= 0 && state.device_id === panel.id) panel.update(state);
        }
        layer.redraw();
        break;
      case "event":
        if (feed.add(message.event) && message.event.fence_id) fences.flash(message.event.fence_id);
        break;
      case "ack":
        feed.markAcked(message);
        break;
      case "eta":
        etas.set(message.eta.delivery_id, message.eta);
        if (panel.id === message.eta.vehicle_id) panel.render();
        break;
      case "resumed":
        if (message.missed) toast(`Reconnected: ${message.missed} missed event(s) caught up`);
        break;
      case "error":
        toast(message.detail);
        feed.ackFailed();
        break;
      default:
        break; // pong, and types a newer server may add
    }
  }

  map.on("click", (event) => {
    const hit = layer.pick(event.layerPoint);
    if (!hit) return;
    if (hit.cluster) map.setView(hit.latlng, Math.min(map.getZoom() + 2, map.getMaxZoom()));
    else select(hit.deviceId);
  });

  let filterTimer = null;
  const viewFilter = () => {
    if (map.getZoom() < FILTER_MIN_ZOOM) return { bbox: null };
    const b = map.getBounds().pad(FILTER_PAD);
    return { bbox: [b.getSouth(), b.getWest(), b.getNorth(), b.getEast()].map((v) => Number(v.toFixed(5))) };
  };
  map.on("moveend", () => {
    const c = map.getCenter();
    localStorage.setItem(VIEW_KEY, JSON.stringify({ lat: c.lat, lon: c.lng, zoom: map.getZoom() }));
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      const next = viewFilter();
      const previous = stream.filter;
      if (JSON.stringify(next) === JSON.stringify(previous ?? { bbox: null })) return;
      stream.setFilter(next); // when closed, the next connection carries it
    }, FILTER_DELAY_MS);
  });
  stream.filter = viewFilter();
  stream.connect();
  startStatusLoop(page);
  page.ready = true;
}

function startStatusLoop(page) {
  const tick = () => {
    const counts = page.store.countsByStatus();
    $("count-moving").textContent = counts.moving;
    $("count-stopped").textContent = counts.stopped;
    $("count-offline").textContent = counts.offline;
    const draw = page.layer.stats;
    $("frame").textContent = draw.draws
      ? `draw ${draw.avgMs.toFixed(1)} ms (p95 ${draw.p95Ms.toFixed(1)}) · ${page.store.size} devices`
      : "";
    if (page.panel && page.panel.id) page.panel.render();
  };
  tick();
  setInterval(tick, STATUS_REFRESH_MS);
}

// A new link opened in this tab changes only the fragment, which reloads nothing.
window.addEventListener("hashchange", () => {
  if (new URLSearchParams(location.hash.slice(1)).has("token")) location.reload();
});

boot().catch((err) => {
  toast(`The page failed to start: ${err.message || err}`);
  throw err;
});
