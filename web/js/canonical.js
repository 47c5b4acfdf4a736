// Canonical JSON (PROTOCOL.md A3): byte-identical to Python
// json.dumps(obj, sort_keys=True, separators=(",", ":")). Integers beyond
// 2^53 are kept exact: parseJson turns them into BigInt.

/** Compares two strings by Unicode code point (Python's sort order). */
export function byCodePoint(a, b) {
  const x = [...a], y = [...b];
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

const SHORT = { 0x22: '\\"', 0x5c: "\\\\", 0x08: "\\b", 0x0c: "\\f", 0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t" };

function str(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (SHORT[c]) out += SHORT[c];
    else if (c >= 0x20 && c <= 0x7e) out += s[i];
    else out += "\\u" + c.toString(16).padStart(4, "0");
  }
  return out + '"';
}

/** The canonical text of a JSON value. Throws on non-integer numbers. */
export function canonical(v) {
  if (v === null) return "null";
  switch (typeof v) {
    case "boolean": return v ? "true" : "false";
    case "bigint": return v.toString();
    case "number":
      if (!Number.isInteger(v)) throw new Error("non-integer number has no canonical form");
      return BigInt(v).toString();
    case "string": return str(v);
    case "object":
      if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
      return "{" + Object.keys(v).sort(byCodePoint).map((k) => str(k) + ":" + canonical(v[k])).join(",") + "}";
    default: throw new Error("value has no JSON form");
  }
}

/** UTF-8 bytes of the canonical text. */
export function canonicalBytes(v) {
  return new TextEncoder().encode(canonical(v));
}

/** JSON.parse keeping integers outside the safe range exact (as BigInt). */
export function parseJson(text) {
  return JSON.parse(text, (_k, v, ctx) => {
    if (typeof v === "number" && !Number.isSafeInteger(v) && ctx && /^-?\d+$/.test(ctx.source)) {
      return BigInt(ctx.source);
    }
    return v;
  });
}
