'use strict';
// bench/peer/walrels.js: reads pg_waldump's records of one round on stdin and
// prints, per event, the WAL by record type and by relation (the relation of
// each record's first block), with index entries inserted per index.
//     pg_waldump -s A -e B | node walrels.js RELMAP_FILE EVENTS LABEL
// RELMAP_FILE: lines "relfilenode|relation name" (from pg_relation_filenode).
const fs = require('fs');
const [mapFile, eventsArg, label] = process.argv.slice(2);
const N = Number(eventsArg);
const names = new Map(fs.readFileSync(mapFile, 'utf8').split('\n').filter(Boolean).map((l) => l.split('|')));
const byType = new Map(), byRel = new Map();
let total = 0, records = 0;
const add = (m, k, len, fpi) => {
    const v = m.get(k) || { n: 0, bytes: 0, fpi: 0, inserts: 0 };
    v.n++; v.bytes += len; v.fpi += fpi;
    m.set(k, v);
    return v;
};
for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
    const m = /^rmgr: (\S+)\s+len \(rec\/tot\):\s*(\d+)\/\s*(\d+),.*?desc: (\S+)(.*)$/.exec(line);
    if (!m) continue;
    const [, rmgr, , tot, desc, rest] = m;
    const len = Number(tot);
    const fpi = /FPW|FPI/.test(rest) ? 1 : 0;
    total += len; records++;
    add(byType, `${rmgr} ${desc}`, len, fpi);
    const rel = /rel \d+\/\d+\/(\d+)/.exec(rest);
    const name = rel ? names.get(rel[1]) || `relfilenode ${rel[1]}` : '(no relation: commit, running xacts...)';
    const v = add(byRel, name, len, fpi);
    if (rmgr === 'Btree' && /^INSERT_(LEAF|UPPER|POST)/.test(desc)) v.inserts++;
}
const per = (x) => (x / N).toFixed(2);
console.log(`  ${label}: ${records} records, ${total} bytes in the round = ${per(records)} records, ${Math.round(total / N)} B per event`);
console.log(`    by record type (records/event, bytes/event):`);
for (const [k, v] of [...byType].sort((a, b) => b[1].bytes - a[1].bytes))
    console.log(`      ${k.padEnd(32)} ${per(v.n).padStart(6)}  ${per(v.bytes).padStart(9)} B${v.fpi ? `  (${v.fpi} with full-page images)` : ''}`);
console.log(`    by relation (records/event, bytes/event, btree entries inserted/event):`);
for (const [k, v] of [...byRel].sort((a, b) => b[1].bytes - a[1].bytes))
    console.log(`      ${k.padEnd(56)} ${per(v.n).padStart(6)}  ${per(v.bytes).padStart(9)} B${v.inserts ? `  ${per(v.inserts)} index entries` : ''}`);
