// crsqlite_peer.mjs — a reference cr-sqlite 0.16.0 peer for crsync's interop tests.
//
// Runs the real cr-sqlite (npm @vlcn.io/crsqlite-wasm 0.16.0, a wasm build of SQLite 3.44 with
// the cr-sqlite extension linked in) under Node.js and speaks JSON lines on stdin/stdout:
// one request object per line in, one reply object per line out, strictly in order.
//
//   request : {"id": <any>, "cmd": "<name>", ...arguments}
//   reply   : {"id": <same>, "ok": true, "result": <value>}
//             {"id": <same>, "ok": false, "error": "<message>"}
//
// Commands
//   ping                                   -> {"sqlite": "3.44.0"}
//   open       {db, site_id?: hex}         -> site id hex. Opens database `db` (a file in an
//                                             in-memory VFS, so it survives close/open within
//                                             this process). With site_id, the database must be
//                                             new: its site id is replaced and it is reopened.
//   close      {db}                        -> null (crsql_finalize + sqlite3_close; file kept)
//   drop       {db}                        -> null (close if open, forget the file)
//   exec       {db, sql}                   -> null (any number of statements, rows discarded)
//   query      {db, sql, params?: [v...]}  -> [[v...], ...] (exactly one statement)
//   changes    {db, since?: int}           -> [[table, pk, cid, val, col_version, db_version,
//                                              site_id, cl, seq], ...] ordered by db_version, seq
//   apply      {db, changes: [[9 values]]} -> rows impacted (crsql_rows_impacted()), all in one
//                                             transaction (rolled back on any error)
//   site_id    {db}                        -> hex string
//   db_version {db}                        -> {"i": "<n>"}
//   quit                                   -> null, then the process exits
// The process also exits when stdin closes.
//
// Values (params, rows, change cells) are typed so that SQLite values round-trip exactly:
//   null                 NULL
//   {"i": "<decimal>"}   INTEGER (int64, carried as BigInt here)
//   {"f": <number>}      REAL; non-JSON numbers as strings: "inf", "-inf", "-0", "nan"
//   {"t": "<string>"}    TEXT (valid UTF-8); {"tx": "<hex>"} for TEXT that is not valid UTF-8
//   {"b": "<hex>"}       BLOB
// Text is bound and read with explicit byte lengths, so embedded NULs survive the binding
// (wa-sqlite's own bind_text/column_text stop at the first NUL).

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

import * as SQLite from "@vlcn.io/wa-sqlite";
import { MemoryVFS } from "@vlcn.io/wa-sqlite/src/examples/MemoryVFS.js";

const require = createRequire(import.meta.url);
// crsqlite-wasm's package "exports" only exposes ./crsqlite.wasm; the Emscripten factory sits
// beside it. Its browser entry point (dist/index.js) wants IndexedDB, so it is not used.
const wasmPath = require.resolve("@vlcn.io/crsqlite-wasm/crsqlite.wasm");
const factoryUrl = pathToFileURL(path.join(path.dirname(wasmPath), "crsqlite.mjs")).href;
const { default: crsqliteFactory } = await import(factoryUrl);

const log = (...args) => process.stderr.write(args.join(" ") + "\n");

const Module = await crsqliteFactory({
  wasmBinary: readFileSync(wasmPath),
  print: log, // keep stdout for the protocol
  printErr: log,
});
const sqlite3 = SQLite.Factory(Module);
const VFS_NAME = "memory";
const vfs = new MemoryVFS();
sqlite3.vfs_register(vfs, false);

const SQLITE_TRANSIENT = -1;
const MAX_INT64 = 0x7fffffffffffffffn;
const MIN_INT64 = -0x8000000000000000n;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------------------------------------
// value codec

function hexToBytes(hex) {
  if (typeof hex !== "string" || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error(`bad hex string: ${JSON.stringify(hex)}`);
  }
  return Uint8Array.from(Buffer.from(hex, "hex"));
}

const bytesToHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex");

function decodeValue(v) {
  if (v === null) return null;
  if (typeof v !== "object" || Array.isArray(v)) throw new Error(`bad value: ${JSON.stringify(v)}`);
  if ("i" in v) {
    const n = BigInt(v.i);
    if (n > MAX_INT64 || n < MIN_INT64) throw new Error(`integer out of int64 range: ${v.i}`);
    return n;
  }
  if ("f" in v) {
    const f = v.f;
    if (typeof f === "number") return f;
    switch (f) {
      case "inf": return Infinity;
      case "-inf": return -Infinity;
      case "-0": return -0;
      case "nan": return NaN;
    }
    throw new Error(`bad real: ${JSON.stringify(f)}`);
  }
  if ("t" in v) {
    if (typeof v.t !== "string") throw new Error(`bad text: ${JSON.stringify(v)}`);
    return v.t;
  }
  if ("tx" in v) return { textBytes: hexToBytes(v.tx) };
  if ("b" in v) return hexToBytes(v.b);
  throw new Error(`bad value: ${JSON.stringify(v)}`);
}

function encodeReal(f) {
  if (Number.isNaN(f)) return { f: "nan" };
  if (f === Infinity) return { f: "inf" };
  if (f === -Infinity) return { f: "-inf" };
  if (Object.is(f, -0)) return { f: "-0" };
  return { f };
}

function check(rc, what, stmt) {
  if (rc !== SQLite.SQLITE_OK) {
    throw new Error(`${what} failed with code ${rc}`);
  }
}

// Bind one decoded value. Bypasses sqlite3.bind(), which binds -0.0 and integral doubles as
// INTEGER, JS numbers > 2^31 as REAL, empty blobs as NULL and text only up to a NUL.
function bindValue(stmt, i, v) {
  if (v === null) {
    check(Module._sqlite3_bind_null(stmt, i), "bind_null");
  } else if (typeof v === "bigint") {
    sqlite3.bind_int64(stmt, i, v);
  } else if (typeof v === "number") {
    sqlite3.bind_double(stmt, i, v);
  } else if (typeof v === "string" || v.textBytes) {
    const bytes = typeof v === "string" ? utf8Encoder.encode(v) : v.textBytes;
    bindBytes(stmt, i, bytes, Module._sqlite3_bind_text, "bind_text");
  } else if (v instanceof Uint8Array) {
    bindBytes(stmt, i, v, Module._sqlite3_bind_blob, "bind_blob");
  } else {
    throw new Error(`cannot bind ${typeof v}`);
  }
}

function bindBytes(stmt, i, bytes, fn, what) {
  // Always allocate at least one byte: a NULL pointer would bind SQL NULL instead of ''/x''.
  const ptr = Module._sqlite3_malloc(Math.max(1, bytes.length));
  if (!ptr) throw new Error("sqlite3_malloc failed");
  try {
    Module.HEAPU8.set(bytes, ptr);
    check(fn(stmt, i, ptr, bytes.length, SQLITE_TRANSIENT), what);
  } finally {
    Module._sqlite3_free(ptr);
  }
}

// Read column i of the current row as a typed JSON value, choosing by sqlite3_column_type so
// that integral REALs stay REAL and INTEGERs are read as full int64.
function columnValue(stmt, i) {
  switch (sqlite3.column_type(stmt, i)) {
    case SQLite.SQLITE_NULL:
      return null;
    case SQLite.SQLITE_INTEGER:
      return { i: sqlite3.column_int64(stmt, i).toString() };
    case SQLite.SQLITE_FLOAT:
      return encodeReal(sqlite3.column_double(stmt, i));
    case SQLite.SQLITE_TEXT: {
      const ptr = Module._sqlite3_column_text(stmt, i); // before column_bytes, per SQLite docs
      const n = Module._sqlite3_column_bytes(stmt, i);
      const bytes = Module.HEAPU8.subarray(ptr, ptr + n);
      try {
        return { t: utf8Decoder.decode(bytes) };
      } catch {
        return { tx: bytesToHex(bytes) };
      }
    }
    case SQLite.SQLITE_BLOB: {
      const ptr = Module._sqlite3_column_blob(stmt, i);
      const n = Module._sqlite3_column_bytes(stmt, i);
      return { b: bytesToHex(Module.HEAPU8.subarray(ptr, ptr + n)) };
    }
    default:
      throw new Error("unknown column type");
  }
}

// ---------------------------------------------------------------------------------------------
// statements

// Run every statement of `sql`; with `params`, `sql` must be one statement and its rows are
// returned.
async function run(db, sql, params, wantRows) {
  const rows = [];
  const str = sqlite3.str_new(db, sql);
  let count = 0;
  try {
    let prepared = { stmt: null, sql: sqlite3.str_value(str) };
    while ((prepared = await sqlite3.prepare_v2(db, prepared.sql))) {
      const stmt = prepared.stmt;
      count += 1;
      try {
        if (params && params.length) {
          if (count > 1) throw new Error("parameters given for more than one statement");
          const n = sqlite3.bind_parameter_count(stmt);
          if (n !== params.length) {
            throw new Error(`statement has ${n} parameters, ${params.length} given`);
          }
          params.forEach((p, k) => bindValue(stmt, k + 1, p));
        }
        while ((await sqlite3.step(stmt)) === SQLite.SQLITE_ROW) {
          if (wantRows) {
            const nCols = sqlite3.data_count(stmt);
            const row = new Array(nCols);
            for (let c = 0; c < nCols; c++) row[c] = columnValue(stmt, c);
            rows.push(row);
          }
        }
      } finally {
        await sqlite3.finalize(stmt);
      }
    }
  } finally {
    sqlite3.str_finish(str);
  }
  if (params && params.length && count === 0) throw new Error("no statement to bind to");
  return rows;
}

async function scalar(db, sql, params) {
  const rows = await run(db, sql, params, true);
  return rows[0][0];
}

// ---------------------------------------------------------------------------------------------
// databases

const dbs = new Map(); // name -> sqlite3 db pointer

function getDb(name) {
  const db = dbs.get(name);
  if (db === undefined) throw new Error(`database ${JSON.stringify(name)} is not open`);
  return db;
}

async function openFile(name) {
  const db = await sqlite3.open_v2(
    name,
    SQLite.SQLITE_OPEN_CREATE | SQLite.SQLITE_OPEN_READWRITE,
    VFS_NAME,
  );
  return db;
}

async function closeDb(name) {
  const db = getDb(name);
  dbs.delete(name);
  try {
    // cr-sqlite caches prepared statements; sqlite3_close fails while they exist.
    await run(db, "SELECT crsql_finalize()", null, false);
  } finally {
    await sqlite3.close(db);
  }
}

async function siteIdHex(db) {
  return (await scalar(db, "SELECT crsql_site_id()")).b;
}

const commands = {
  async ping() {
    return { sqlite: sqlite3.libversion() };
  },

  async open({ db: name, site_id }) {
    if (typeof name !== "string" || !name) throw new Error("db name required");
    if (dbs.has(name)) throw new Error(`database ${JSON.stringify(name)} is already open`);
    let db = await openFile(name);
    try {
      if (site_id != null) {
        const wanted = hexToBytes(site_id);
        if (wanted.length !== 16) throw new Error("site_id must be 16 bytes");
        // Refuse to relabel a database that already recorded writes under its old site id.
        if ((await scalar(db, "SELECT crsql_db_version()")).i !== "0") {
          throw new Error("site_id can only be set on a new database");
        }
        await run(db, "UPDATE crsql_site_id SET site_id = ? WHERE ordinal = 0", [wanted], false);
        // The site id is cached per connection when the extension loads: reopen.
        await run(db, "SELECT crsql_finalize()", null, false);
        await sqlite3.close(db);
        db = null;
        db = await openFile(name);
        const got = await siteIdHex(db);
        if (got !== bytesToHex(wanted)) throw new Error(`site id not applied (got ${got})`);
      }
      dbs.set(name, db);
      return await siteIdHex(db);
    } catch (e) {
      if (db !== null && !dbs.has(name)) {
        try {
          await run(db, "SELECT crsql_finalize()", null, false);
          await sqlite3.close(db);
        } catch {}
      }
      throw e;
    }
  },

  async close({ db: name }) {
    await closeDb(name);
    return null;
  },

  async drop({ db: name }) {
    if (dbs.has(name)) await closeDb(name);
    for (const suffix of ["", "-journal", "-wal"]) vfs.mapNameToFile.delete(name + suffix);
    return null;
  },

  async exec({ db, sql }) {
    await run(getDb(db), sql, null, false);
    return null;
  },

  async query({ db, sql, params }) {
    return run(getDb(db), sql, (params ?? []).map(decodeValue), true);
  },

  async changes({ db, since }) {
    const s = since == null ? 0n : BigInt(typeof since === "object" ? since.i : since);
    return run(
      getDb(db),
      `SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq
         FROM crsql_changes WHERE db_version > ? ORDER BY db_version, seq`,
      [s],
      true,
    );
  },

  async apply({ db: name, changes }) {
    const db = getDb(name);
    if (!Array.isArray(changes)) throw new Error("changes must be a list");
    const decoded = changes.map((c) => {
      if (!Array.isArray(c) || c.length !== 9) throw new Error("each change must have 9 values");
      return c.map(decodeValue);
    });
    await run(db, "BEGIN", null, false);
    try {
      // crsql_rows_impacted() is reset by COMMIT but not by ROLLBACK: count from here.
      const before = BigInt((await scalar(db, "SELECT crsql_rows_impacted()")).i);
      const str = sqlite3.str_new(
        db,
        `INSERT INTO crsql_changes
           ("table", pk, cid, val, col_version, db_version, site_id, cl, seq)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      try {
        const prepared = await sqlite3.prepare_v2(db, sqlite3.str_value(str));
        const stmt = prepared.stmt;
        try {
          for (const row of decoded) {
            row.forEach((v, k) => bindValue(stmt, k + 1, v));
            await sqlite3.step(stmt);
            await sqlite3.reset(stmt);
          }
        } finally {
          await sqlite3.finalize(stmt);
        }
      } finally {
        sqlite3.str_finish(str);
      }
      const after = BigInt((await scalar(db, "SELECT crsql_rows_impacted()")).i);
      await run(db, "COMMIT", null, false);
      return { i: (after - before).toString() };
    } catch (e) {
      if (!sqlite3.get_autocommit(db)) {
        try {
          await run(db, "ROLLBACK", null, false);
        } catch {}
      }
      throw e;
    }
  },

  async site_id({ db }) {
    return siteIdHex(getDb(db));
  },

  async db_version({ db }) {
    return scalar(getDb(db), "SELECT crsql_db_version()");
  },
};

// ---------------------------------------------------------------------------------------------
// JSON-lines loop: requests are handled one at a time, in order.

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let quitting = false;

async function handle(line) {
  if (!line.trim()) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    reply({ id: null, ok: false, error: `bad JSON: ${e.message}` });
    return;
  }
  const id = req?.id ?? null;
  if (req?.cmd === "quit") {
    quitting = true;
    reply({ id, ok: true, result: null });
    return;
  }
  const fn = Object.hasOwn(commands, req?.cmd) ? commands[req.cmd] : undefined;
  if (!fn) {
    reply({ id, ok: false, error: `unknown command: ${JSON.stringify(req?.cmd)}` });
    return;
  }
  try {
    reply({ id, ok: true, result: await fn(req) });
  } catch (e) {
    const msg = e?.message ?? String(e);
    reply({ id, ok: false, error: e?.code !== undefined ? `${msg} (code ${e.code})` : msg });
  }
}

async function shutdown() {
  for (const name of [...dbs.keys()]) {
    try {
      await closeDb(name);
    } catch {}
  }
  process.exitCode = 0;
  // Let stdout drain, then leave even if something keeps the loop alive.
  process.stdout.write("", () => process.exit(0));
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
let chain = Promise.resolve();
rl.on("line", (line) => {
  chain = chain.then(async () => {
    if (quitting) return;
    await handle(line);
    if (quitting) {
      rl.close();
    }
  });
});
rl.on("close", () => {
  chain = chain.then(shutdown);
});
reply({ id: "ready", ok: true, result: { sqlite: sqlite3.libversion() } });
