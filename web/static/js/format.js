// Numbers, durations and times as operators read them. A real zero is "0",
// never a dash; a dash means "no data".

export const DASH = "—";

export function count(n) {
  return n == null ? DASH : Math.round(n).toLocaleString("en-US");
}

export function percent(fraction, digits = 1) {
  return fraction == null ? DASH : `${(fraction * 100).toFixed(digits)}%`;
}

/** 0 s, 8.4 s, 42 s, 3m 05s, 1h 02m, 2d 4h */
export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return DASH;
  const s = Math.max(0, seconds);
  if (s < 10 && s % 1) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const whole = Math.round(s);
  const [d, h, m, sec] = [Math.floor(whole / 86400), Math.floor(whole / 3600) % 24, Math.floor(whole / 60) % 60, whole % 60];
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${pad(m)}m`;
  return `${m}m ${pad(sec)}s`;
}

/** A ticking clock: 4:05 or 1:02:09 */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor(s / 60) % 60;
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export function ago(iso, now) {
  if (!iso) return DASH;
  const s = (now - Date.parse(iso)) / 1000;
  if (s < 10) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** 2026-11-29 06:00:05 in the viewer's time zone */
export function absolute(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${timeOfDay(iso)}`;
}

export function timeOfDay(iso) {
  const d = new Date(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function rate(perSecond) {
  if (perSecond == null || !Number.isFinite(perSecond)) return "";
  if (perSecond >= 100) return `${Math.round(perSecond)}/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}/s`;
  return `${(perSecond * 60).toFixed(1)}/min`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : DASH;
}

export function seconds(fromIso, toIso) {
  if (!fromIso || !toIso) return null;
  return Math.max(0, (Date.parse(toIso) - Date.parse(fromIso)) / 1000);
}

/** Performance against an average, with the original's thresholds. */
export function pace(value, average) {
  if (value == null || !average) return null;
  const ratio = value / average;
  return { ratio, label: ratio <= 0.8 ? "fast" : ratio <= 1.2 ? "normal" : "slow" };
}

export const WINDOWS = [
  { label: "4h", seconds: 4 * 3600 },
  { label: "24h", seconds: 86400 },
  { label: "3d", seconds: 3 * 86400 },
  { label: "7d", seconds: 7 * 86400 },
];

export function windowLabel(secondsValue) {
  const found = WINDOWS.find((w) => w.seconds === secondsValue);
  return found ? found.label.replace(/(\d)([hd])/, "$1 $2") : duration(secondsValue);
}

function pad(n) {
  return String(n).padStart(2, "0");
}
