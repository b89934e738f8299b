// Times in the viewer's locale and time zone; numbers with the precision they deserve.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** A Unix time (seconds) as a local date and time; "—" when absent. */
export function when(seconds) {
  return seconds ? dateTime.format(new Date(seconds * 1000)) : "—";
}

/** A Unix time as a local time of day (for the events feed). */
export function clock(seconds) {
  return timeOnly.format(new Date(seconds * 1000));
}

/** How far ``seconds`` (a Unix time) is from now, in words: "in 3 minutes", "2 hours ago". */
export function fromNow(seconds) {
  const delta = seconds - Date.now() / 1000;
  const units = [
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
  ];
  for (const [unit, size] of units) {
    if (Math.abs(delta) >= size) return relative.format(Math.round(delta / size), unit);
  }
  return relative.format(Math.round(delta), "second");
}

export function count(n) {
  return n === null || n === undefined ? "—" : integer.format(n);
}

/** A metric: four significant digits (losses, accuracies, rewards); tiny or huge ones as 1.23e-5. */
const significant = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 });
export function metric(x) {
  if (x === undefined || x === null) return "—";
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(2);
  return significant.format(x);
}

/** A hyperparameter or other setting as written: numbers in full, lists joined, booleans. */
export function setting(value) {
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(6)));
  return String(value);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(value)} ${units[unit]}`;
}

export function percent(fraction) {
  return new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 0 }).format(fraction);
}

/** A status as words: "validating_files" -> "validating files". */
export function status(value) {
  return String(value).replaceAll("_", " ");
}
