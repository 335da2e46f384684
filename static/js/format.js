// How a number of the KSM files is written on screen, by its unit (sim/ksm_files.py `unit`).
// Every value is shown whole: bytes in B/KiB/MiB/GiB, page counts grouped by thousands up to
// 9,999,999 and in millions above; the exact value goes in the cell's title (hover).
// tests/browser/test_presenter.py mirrors these rules to check every cell against the API.

const BINARY = ["B", "KiB", "MiB", "GiB", "TiB"];
const PAGE = 4096;

/** "2.8 MiB": one decimal below 100 of a unit, none above; whole bytes below 1 KiB. */
export function bytes(v) {
  const n = Number(v);
  let i = 0, x = Math.abs(n);
  while (x >= 1024 && i < BINARY.length - 1) { x /= 1024; i++; }
  if (i === 0) return `${n} B`;
  const s = x.toFixed(x >= 100 ? 0 : 1);
  return `${n < 0 ? "-" : ""}${s} ${BINARY[i]}`;
}

/** "65,536"; "16.8 M" from 10,000,000 on. */
export function count(v) {
  const n = Number(v);
  if (Math.abs(n) >= 1e7) return `${(n / 1e6).toFixed(1)} M`;
  return n.toLocaleString("en-US");
}

/** A duration in nanoseconds: "420 µs", "12.4 ms", "3.82 s", "2 min 5.0 s". */
export function duration(ns) {
  const n = Number(ns);
  if (n < 1e6) return `${Math.round(n / 1e3)} µs`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} ms`;
  if (n < 60e9) return `${(n / 1e9).toFixed(2)} s`;
  const min = Math.floor(n / 60e9);
  return `${min} min ${((n - min * 60e9) / 1e9).toFixed(1)} s`;
}

/** ksmd's CPU share of the simulated time, in percent ("1.23 %"), or "" before any time. */
export function share(cpuNs, timeNs) {
  return timeNs > 0 ? `${((100 * cpuNs) / timeNs).toFixed(2)} %` : "";
}

/** The text of a value of this unit ("—" where the kernel has no such file). */
export function formatValue(v, unit) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "string") return v;
  if (unit === "bytes") return bytes(v);
  return count(v);
}

/** The hover text: the exact value, and for page counts what they weigh. */
export function exactValue(v, unit) {
  if (v === null || v === undefined) return "this kernel has no such file";
  if (typeof v !== "number") return String(v);
  const exact = v.toLocaleString("en-US");
  if (unit === "bytes") return `${exact} bytes`;
  if (unit === "pages") return `${exact} pages = ${bytes(v * PAGE)}`;
  return exact;
}
