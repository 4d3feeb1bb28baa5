// Times the core's request stages and each signature algorithm in V8 (Node.js), from the same
// crate and release profile as the filter (bench/v8-stages). Usage:
//   node bench/v8_stages.mjs target/bench-v8-stages/wasm32-wasip1/release/v8_stages.wasm [--json]
// Each stage runs for about `BUDGET_MS` of CPU after a warm-up; the figure is CPU µs per call.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const BUDGET_MS = Number(process.env.V8_STAGES_BUDGET_MS || 300);

const [wasmPath, ...flags] = process.argv.slice(2);
if (!wasmPath) {
  console.error("usage: node bench/v8_stages.mjs V8_STAGES_WASM [--json]");
  process.exit(2);
}
const wasi = new WASI({ version: "preview1", args: [], env: {} });
// The library also carries the filter's proxy-wasm exports; their host imports are never called.
const env = new Proxy({}, { get: () => () => 0 });
const module = await WebAssembly.compile(readFileSync(wasmPath));
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: wasi.wasiImport, env });
wasi.initialize(instance);
const x = instance.exports;
if (x.stages_setup() !== 0) {
  console.error("v8-stages: setup failed (policy, keys, the demo token, or the ~200 KB Observation's plan or release)");
  process.exit(1);
}
// The stage names, written once in the wasm (bench/v8-stages/src/lib.rs `STAGES`).
const STAGES = Array.from({ length: x.stages_count() }, (_, i) =>
  new TextDecoder().decode(new Uint8Array(x.memory.buffer, x.stages_name_ptr(i), x.stages_name_len(i))));

function cpuUs() {
  const u = process.cpuUsage();
  return u.user + u.system;
}

// Warm-up: V8 compiles wasm with its baseline tier first and optimises hot functions on
// background threads (whose CPU process.cpuUsage would count); Envoy's long-running VMs run the
// optimised code, so every stage runs untimed until that has happened.
const warmUntil = Date.now() + Number(process.env.V8_STAGES_WARMUP_MS || 1500);
while (Date.now() < warmUntil) {
  for (let i = 0; i < STAGES.length; i++) x.stages_run(i, 1);
}

const results = [];
for (let i = 0; i < STAGES.length; i++) {
  x.stages_run(i, 3);
  let n = 1;
  let spent = 0;
  // Grow the batch until one batch takes ~1/10 of the budget, then run batches to the budget.
  for (;;) {
    const t0 = cpuUs();
    x.stages_run(i, n);
    spent = cpuUs() - t0;
    if (spent * 10 >= BUDGET_MS * 1000 || n >= 1 << 24) break;
    n *= 4;
  }
  let calls = 0;
  let total = 0;
  while (total < BUDGET_MS * 1000) {
    const t0 = cpuUs();
    x.stages_run(i, n);
    total += cpuUs() - t0;
    calls += n;
  }
  // The body a stage works on (bytes; 0: none), for a cost per KiB.
  const bytes = x.stages_bytes ? x.stages_bytes(i) : 0;
  results.push({ stage: STAGES[i], us: total / calls, calls, bytes });
}
if (flags.includes("--json")) {
  console.log(JSON.stringify({ node: process.version, results }, null, 1));
} else {
  for (const r of results) {
    const perKib = r.bytes ? `  ${(r.us / (r.bytes / 1024)).toFixed(3).padStart(8)} µs/KiB` : "";
    console.log(`${r.us.toFixed(2).padStart(10)} µs${perKib}  ${r.stage}`);
  }
}
