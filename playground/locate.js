// Find where a policy error's location (`routes[3].fhir.interactions[1]`, as the compiler
// reports it) is in the policy text, so the page can select it in the editor. The compiler only
// says the path; this scanner records where each value starts and ends. Syntax errors carry
// "line L column C" instead, which `lineColumn` reads.

/** The `{start, end}` character range of the value at `location` in `text`, or of the nearest
 * enclosing value that exists; `null` if `text` is not JSON or nothing matches. */
export function locate(text, location) {
  let spans;
  try {
    spans = scan(text);
  } catch {
    return null;
  }
  const parts = location.match(/[^.[\]]+|\[\d+\]/g) || [];
  for (let n = parts.length; n > 0; n--) {
    const key = join(parts.slice(0, n));
    if (spans.has(key)) return spans.get(key);
  }
  return null;
}

/** The character offset of "line L column C" (1-based, as serde_json reports) in an error
 * message, or `null`. */
export function lineColumn(text, message) {
  const m = /line (\d+) column (\d+)/.exec(message);
  if (!m) return null;
  const lines = text.split("\n");
  const line = Math.min(Number(m[1]), lines.length);
  let offset = 0;
  for (let i = 0; i < line - 1; i++) offset += lines[i].length + 1;
  const start = offset + Math.max(0, Math.min(Number(m[2]) - 1, lines[line - 1].length));
  return { start, end: Math.min(start + 1, text.length) };
}

function join(parts) {
  return parts.map((p, i) => (p.startsWith("[") || i === 0 ? p : "." + p)).join("");
}

// A strict-enough JSON scanner: path → span of every value; object members span from their key.
function scan(text) {
  const spans = new Map();
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\r\n".includes(text[i])) i++;
  };
  const fail = () => {
    throw new SyntaxError(`unexpected input at ${i}`);
  };
  const string = () => {
    if (text[i] !== '"') fail();
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (path, spanStart) => {
    ws();
    const start = i;
    if (text[i] === "{") {
      i++;
      ws();
      if (text[i] === "}") i++;
      else {
        for (;;) {
          ws();
          const keyStart = i;
          const key = string();
          ws();
          if (text[i++] !== ":") fail();
          value(path === "" ? key : `${path}.${key}`, keyStart);
          ws();
          if (text[i] === ",") i++;
          else if (text[i] === "}") {
            i++;
            break;
          } else fail();
        }
      }
    } else if (text[i] === "[") {
      i++;
      ws();
      if (text[i] === "]") i++;
      else {
        for (let n = 0; ; n++) {
          value(`${path}[${n}]`);
          ws();
          if (text[i] === ",") i++;
          else if (text[i] === "]") {
            i++;
            break;
          } else fail();
        }
      }
    } else if (text[i] === '"') string();
    else {
      const m = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 64));
      if (!m) fail();
      i += m[0].length;
    }
    spans.set(path, { start: spanStart ?? start, end: i });
  };
  value("");
  ws();
  if (i !== text.length) fail();
  return spans;
}
