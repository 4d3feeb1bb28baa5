// Line diff of the upstream body against the released one (Myers' O(ND) algorithm).
//
// Minimization mostly deletes lines and rewrites a few (masked values), so the edit distance D
// is small next to the body's length; the trace kept for the backtrack holds only the 2d+3
// diagonals live at step d, about D² integers in all. Past MAX_EDITS the diff gives up (null)
// rather than stall the page or allocate without bound.

/** Largest edit distance the diff computes before giving up. */
export const MAX_EDITS = 4000;

/**
 * The edit script turning lines `a` into lines `b`: `{op: "=" | "-" | "+", a, b, text}` in
 * order (`a`/`b` are 0-based line numbers, `null` on the side a line is absent from), or `null`
 * when more than `maxEdits` lines differ.
 */
export function diffLines(a, b, maxEdits = MAX_EDITS) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const middle = myers(a.slice(start, endA), b.slice(start, endB), maxEdits);
  if (middle === null) return null;
  const ops = [];
  for (let i = 0; i < start; i++) ops.push({ op: "=", a: i, b: i, text: a[i] });
  for (const o of middle) {
    ops.push({ op: o.op, a: o.a === null ? null : o.a + start, b: o.b === null ? null : o.b + start, text: o.text });
  }
  for (let i = 0; endA + i < a.length; i++) ops.push({ op: "=", a: endA + i, b: endB + i, text: a[endA + i] });
  return ops;
}

function myers(a, b, maxEdits) {
  const n = a.length;
  const m = b.length;
  if (n === 0 && m === 0) return [];
  const max = n + m;
  const off = max + 1;
  // v[off + k]: the furthest x reached on diagonal k.
  const v = new Int32Array(2 * max + 3);
  const trace = [];
  for (let d = 0; d <= Math.min(max, maxEdits); d++) {
    // Diagonals -d-1..d+1 as they stood before step d: all the backtrack reads at this step.
    trace.push(v.slice(off - d - 1, off + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1] < v[off + k + 1]) ? v[off + k + 1] : v[off + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) return backtrack(trace, a, b);
    }
  }
  return null;
}

function backtrack(trace, a, b) {
  const out = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d >= 0; d--) {
    const v = trace[d];
    const at = (k) => v[k + d + 1];
    const k = x - y;
    const prevK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const prevX = at(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      x--;
      y--;
      out.push({ op: "=", a: x, b: y, text: a[x] });
    }
    if (d > 0) {
      if (x === prevX) out.push({ op: "+", a: null, b: prevY, text: b[prevY] });
      else out.push({ op: "-", a: prevX, b: null, text: a[prevX] });
    }
    x = prevX;
    y = prevY;
  }
  return out.reverse();
}

/**
 * Group an edit script into hunks with `context` unchanged lines around each change:
 * `[{ops, skippedBefore}]`, plus the unchanged lines left after the last hunk.
 */
export function hunks(ops, context = 3) {
  const changed = [];
  ops.forEach((o, i) => {
    if (o.op !== "=") changed.push(i);
  });
  const result = [];
  let i = 0;
  let last = 0;
  while (i < changed.length) {
    const from = Math.max(last, changed[i] - context);
    let to = changed[i] + context;
    while (i + 1 < changed.length && changed[i + 1] - context <= to + 1) {
      i++;
      to = changed[i] + context;
    }
    to = Math.min(to, ops.length - 1);
    result.push({ skippedBefore: from - last, ops: ops.slice(from, to + 1) });
    last = to + 1;
    i++;
  }
  return { hunks: result, skippedAfter: ops.length - last };
}

/** Pretty-print JSON text for the diff (2-space indent, key order kept); the text itself if not JSON. */
export function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
