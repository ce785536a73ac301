// A benchmark of the fleet layer in the browser: N synthetic devices, every one moving
// every second, fed through the same path as the websocket's messages (JSON text
// parsed, then applied to the store, then drawn). Opened as /dispatch?bench=10000;
// the results land in window.fleetpulse.bench (bench/dispatch_page drives it).

const PHASES = [
  { name: "every device drawn (zoom 15)", zoom: 15, pan: false },
  { name: "clustered (zoom 12)", zoom: 12, pan: false },
  { name: "panning, redraw every frame (zoom 15)", zoom: 15, pan: true },
];
const STEP_DEG = 0.0001; // ~10 m: a van's move in a second
const PAN_PX = 4;
const PAN_SWING_FRAMES = 60;

function random(seed) { // mulberry32: the same fleet on every run
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function summary(values) {
  if (!values.length) return { n: 0, median: null, p95: null, max: null };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
  const round = (v) => Math.round(v * 100) / 100;
  return { n: sorted.length, median: round(at(0.5)), p95: round(at(0.95)), max: round(sorted[sorted.length - 1]) };
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));

export async function runBench({ page, n, params }) {
  const seconds = Number(params.get("seconds") || 5);
  const centre = (params.get("center") || "41.1496,-8.6109").split(",").map(Number);
  const { map, store, layer } = page;
  layer.options.measureFlush = true; // time the drawing itself, not just its recording
  map.setView(centre, 15, { animate: false });
  const view = map.getBounds(); // the fleet fills the screen at zoom 15
  const rnd = random(42);
  const kinds = ["vehicle", "vehicle", "vehicle", "phone", "drone"];
  const statuses = ["moving", "moving", "moving", "stopped", "offline"];
  const now = Date.now();
  const devices = Array.from({ length: n }, (_, i) => ({
    device_id: `bench-${i}`,
    ts: new Date(now).toISOString(),
    received_at: new Date(now).toISOString(),
    lat: view.getSouth() + rnd() * (view.getNorth() - view.getSouth()),
    lon: view.getWest() + rnd() * (view.getEast() - view.getWest()),
    cell: 0,
    coarse_cell: 0,
    status: statuses[i % statuses.length],
    kind: kinds[i % kinds.length],
    speed: 8,
    heading: 0,
  }));
  store.replaceAll(devices);
  layer.redraw();
  const results = { devices: n, seconds_per_phase: seconds, dpr: window.devicePixelRatio,
    viewport: [map.getSize().x, map.getSize().y], phases: [] };
  for (const phase of PHASES) {
    map.setView(centre, phase.zoom, { animate: false });
    await nextFrame();
    await nextFrame();
    const draws = [], applies = [], frames = [];
    const onDrawn = (e) => draws.push(e.ms);
    layer.on("drawn", onDrawn);
    const tick = setInterval(() => {
      const t = Date.now();
      for (const d of devices) {
        d.lat += (rnd() - 0.5) * STEP_DEG;
        d.lon += (rnd() - 0.5) * STEP_DEG;
        d.ts = new Date(t).toISOString();
      }
      const text = JSON.stringify({ type: "positions", devices });
      const started = performance.now();
      const message = JSON.parse(text);
      for (const state of message.devices) store.upsert(state);
      layer.redraw();
      applies.push(performance.now() - started);
    }, 1000);
    const until = performance.now() + seconds * 1000;
    let last = performance.now(), frame = 0;
    while (performance.now() < until) {
      await nextFrame();
      const t = performance.now();
      frames.push(t - last);
      last = t;
      if (phase.pan) {
        const direction = Math.floor(frame / PAN_SWING_FRAMES) % 2 ? -1 : 1;
        map.panBy([direction * PAN_PX, 0], { animate: false });
      }
      frame++;
    }
    clearInterval(tick);
    layer.off("drawn", onDrawn);
    results.phases.push({
      name: phase.name, zoom: phase.zoom, drawn: layer.stats.drawn,
      clusters: layer.stats.clusters, draw_ms: summary(draws), apply_ms: summary(applies),
      frame_interval_ms: summary(frames),
    });
  }
  results.done = true;
  return results;
}
