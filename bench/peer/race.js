'use strict';
// bench/peer/race.js: the driver bench/peer.sh runs (from the temporary
// folder holding its node_modules).  One node process, three contenders,
// each with 8 requests in flight (8 async workers pulling from a shared
// queue, a pool of 8 connections), alternating rounds on the same payloads:
//   engine  @supabase/stripe-sync-engine StripeSync.processWebhook(payload, signature)
//   ours    SELECT stripe_billing.stripe_handle_webhook($1, $2)
//   insert  INSERT INTO plain (doc) VALUES ($1::jsonb)
// Connects with the PG* environment (the cluster bench/peer.sh started).
//     node race.js EVENTS ROUNDS FIXTURE_DIR SECRET WAL_RANGES_FILE
const net = require('net');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

// Every TCP connection this process opens is counted: PostgreSQL is reached
// over its Unix socket, so the count must stay 0 (no Stripe API call).
let tcpConnects = 0;
const tcpTargets = [];
const socketConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
    let opts = Array.isArray(args[0]) ? args[0][0] : args[0];
    let unix = false, target;
    if (opts && typeof opts === 'object') {
        unix = Boolean(opts.path);
        target = opts.path || `${opts.host || 'localhost'}:${opts.port}`;
    } else if (typeof opts === 'string' && Number.isNaN(Number(opts))) {
        unix = true;
        target = opts;
    } else {
        target = `${typeof args[1] === 'string' ? args[1] : 'localhost'}:${opts}`;
    }
    if (!unix) { tcpConnects++; tcpTargets.push(target); }
    return socketConnect.apply(this, args);
};

const { Pool } = require('pg');
const { StripeSync, runMigrations } = require('@supabase/stripe-sync-engine');

const [eventsArg, roundsArg, fixtureDir, secret, walRangesFile] = process.argv.slice(2);
const N = Number(eventsArg), ROUNDS = Number(roundsArg);
const CONCURRENCY = 8;
const ENGINE_SCHEMA = 'stripe';
const CONTENDERS = ['engine', 'ours', 'insert'];
let failures = [];
const fail = (msg) => { failures.push(msg); console.log(`FAIL: ${msg}`); };

// ---------------------------------------------------------------- payloads
function sign(body, t = Math.floor(Date.now() / 1000)) {
    const v1 = crypto.createHmac('sha256', secret).update(`${t}.${body}`, 'utf8').digest('hex');
    return `t=${t},v1=${v1}`;
}
// prefix of a Stripe id: everything up to its last underscore (sub_sched_, price_)
const prefixOf = (id) => id.slice(0, id.lastIndexOf('_') + 1) || 'x_';
// A copy of a fixture event with fresh ids: the event, its object and the
// objects of its embedded lists (subscription items, entitlements, refunds,
// invoice lines); references to other objects (customer, price, product)
// are kept.  An active entitlement summary is keyed by its customer: that
// one is rewritten too.  Always test mode.
function rewrite(fixture, tag, n) {
    const e = JSON.parse(JSON.stringify(fixture));
    const suffix = `peer${tag}n${n}`;
    e.id = `evt_${suffix}`;
    e.livemode = false;
    const o = e.data.object;
    o.livemode = false;
    if (typeof o.id === 'string') o.id = prefixOf(o.id) + suffix;
    if (o.object === 'entitlements.active_entitlement_summary') o.customer = `cus_${suffix}`;
    for (const [key, list] of Object.entries(o)) {
        if (!list || typeof list !== 'object' || list.object !== 'list' || !Array.isArray(list.data)) continue;
        list.data.forEach((item, j) => {
            if (item && typeof item.id === 'string') item.id = `${prefixOf(item.id)}${suffix}i${j}`;
            if (item && o.object === 'subscription' && typeof item.subscription === 'string') item.subscription = o.id;
            if (item && o.object === 'entitlements.active_entitlement_summary') item.customer = o.customer;
        });
    }
    return e;
}
function payloadSet(fixtures, tag, n) {
    const out = [];
    for (let i = 0; i < n; i++) {
        const f = fixtures[i % fixtures.length];
        out.push({ type: f.event.type, body: JSON.stringify(rewrite(f.event, tag, i)) });
    }
    return out;
}

// ---------------------------------------------------------------- database
const admin = new Pool({ max: 1, idleTimeoutMillis: 0 });
const pool = new Pool({ max: CONCURRENCY, idleTimeoutMillis: 0 });
const q = async (text, params) => (await admin.query(text, params)).rows;

async function tablesOf(schema, except = []) {
    return (await q(`SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, [schema]))
        .map((r) => r.tablename).filter((t) => !except.includes(t));
}
async function counts(schema, tables) {
    const sql = tables.map((t) => `SELECT '${t}' AS t, count(*)::bigint AS n FROM "${schema}"."${t}"`).join(' UNION ALL ');
    const m = {};
    for (const r of await q(sql)) m[r.t] = Number(r.n);
    return m;
}
const diff = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] || 0)]).filter(([, v]) => v !== 0));
const fmtRows = (d) => Object.entries(d).map(([t, v]) => `${v > 0 ? '+' : ''}${v} ${t}`).join(', ') || 'none';

// Backends flush their statistics (pg_stat_user_tables, pg_stat_wal) when
// they go idle, at most once a second: make every pooled connection flush now.
async function flushStats(pools) {
    for (const p of pools) {
        const clients = await Promise.all(Array.from({ length: CONCURRENCY }, () => p.connect()));
        await Promise.all(clients.map((c) => c.query('SELECT pg_stat_force_next_flush()')));
        clients.forEach((c) => c.release());
    }
    await q('SELECT pg_stat_force_next_flush()');
    await q('SELECT pg_stat_clear_snapshot()');
}
async function snapshot() {
    const [lsn] = await q('SELECT pg_current_wal_insert_lsn() AS lsn');
    const [wal] = await q('SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal');
    const tabs = {};
    for (const r of await q(`SELECT schemaname || '.' || relname AS t, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
                                    seq_scan, coalesce(idx_scan, 0) AS idx_scan
                               FROM pg_stat_user_tables WHERE schemaname IN ('stripe_billing', $1, 'public')`, [ENGINE_SCHEMA]))
        tabs[r.t] = ['n_tup_ins', 'n_tup_upd', 'n_tup_hot_upd', 'n_tup_del', 'seq_scan', 'idx_scan'].map((k) => Number(r[k]));
    const idx = {};
    for (const r of await q(`SELECT schemaname || '.' || indexrelname AS i, idx_scan, idx_tup_read
                               FROM pg_stat_user_indexes WHERE schemaname IN ('stripe_billing', $1, 'public')`, [ENGINE_SCHEMA]))
        idx[r.i] = [Number(r.idx_scan), Number(r.idx_tup_read)];
    return { lsn: lsn.lsn, wal: Object.fromEntries(Object.entries(wal).map(([k, v]) => [k, Number(v)])), tabs, idx };
}

// ---------------------------------------------------------------- contenders
let engine;
const contender = {
    engine: (p) => engine.processWebhook(p.body, p.header).then(() => 'ok'),
    ours: (p) => pool.query('SELECT stripe_billing.stripe_handle_webhook($1, $2) AS outcome', [p.body, p.header])
        .then((r) => r.rows[0].outcome),
    insert: (p) => pool.query('INSERT INTO plain (doc) VALUES ($1::jsonb)', [p.body]).then(() => 'ok'),
};
async function race(fn, payloads) {
    let next = 0;
    const results = new Array(payloads.length), errors = [];
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
        for (;;) {
            const i = next++;
            if (i >= payloads.length) return;
            try { results[i] = await fn(payloads[i]); } catch (e) { errors.push(`${payloads[i].type}: ${e.message}`); }
        }
    }));
    return { secs: Number(process.hrtime.bigint() - t0) / 1e9, results, errors };
}
const tally = (xs) => xs.reduce((m, x) => ((m[x] = (m[x] || 0) + 1), m), {});
const fmtTally = (m) => Object.entries(m).map(([k, v]) => `${k} ${v}`).join(', ');

// ---------------------------------------------------------------- main
async function main() {
    // a dead Stripe: a loopback listener that counts and drops every connection
    let stripeHits = 0;
    const dead = net.createServer((s) => { stripeHits++; s.destroy(); });
    await new Promise((r) => dead.listen(0, '127.0.0.1', r));
    const deadPort = dead.address().port;

    let migrationError = null;
    await runMigrations({ schema: ENGINE_SCHEMA, logger: { info() {}, error(e) { migrationError = e; } } });
    if (migrationError) throw migrationError;
    engine = new StripeSync({
        schema: ENGINE_SCHEMA,
        stripeSecretKey: 'sk_test_peer_bench_offline_dummy',
        stripeWebhookSecret: secret,
        revalidateObjectsViaStripeApi: [],
        backfillRelatedEntities: false,
        autoExpandLists: false,
        poolConfig: { max: CONCURRENCY, idleTimeoutMillis: 0 },
    });
    for (const [k, v] of [['host', '127.0.0.1'], ['port', deadPort], ['protocol', 'http'], ['maxNetworkRetries', 0]])
        engine.stripe._setApiField(k, v);
    const enginePool = engine.postgresClient.pool;
    // the guard works: an API call reaches the dead Stripe and is counted
    await engine.stripe.customers.retrieve('cus_peer_selftest').then(() => fail('dead Stripe answered'), () => {});
    if (stripeHits < 1 || tcpConnects < 1) fail(`network guard self-test: ${stripeHits} hits, ${tcpConnects} TCP connects`);
    console.log(`network guard: Stripe API pointed at dead 127.0.0.1:${deadPort}; self-test call counted (${stripeHits} hit, ${tcpConnects} TCP connect), counters reset`);
    stripeHits = 0; tcpConnects = 0; tcpTargets.length = 0;

    const engineTables = await tablesOf(ENGINE_SCHEMA, ['migrations']);
    const oursTables = await tablesOf('stripe_billing');
    console.log(`sync engine: ${engineTables.length} tables in schema ${ENGINE_SCHEMA} after runMigrations`);

    // fixtures: every file of both subfolders
    const fixtures = [];
    for (const sub of fs.readdirSync(fixtureDir).sort())
        for (const file of fs.readdirSync(path.join(fixtureDir, sub)).sort().filter((f) => f.endsWith('.json'))) {
            const event = JSON.parse(fs.readFileSync(path.join(fixtureDir, sub, file), 'utf8'));
            fixtures.push({ name: `${sub}/${file}`, event });
        }
    const liveEvents = fixtures.filter((f) => f.event.livemode !== false).map((f) => f.name);
    const liveObjects = fixtures.filter((f) => f.event.data.object.livemode === true).map((f) => f.name);
    console.log(`fixtures: ${fixtures.length} files; event livemode true in: ${liveEvents.join(', ') || 'none'}; ` +
        `object livemode true in: ${liveObjects.join(', ') || 'none'} (every payload is sent with both false: test mode, as stripe_billing.livemode = off)`);

    // probe each fixture once (fresh ids): which ones both sides apply offline,
    // and which rows one event of it writes on each side
    const used = [], skipped = [];
    for (const [k, f] of fixtures.entries()) {
        const body = JSON.stringify(rewrite(f.event, 'probe', k));
        const header = sign(body);
        const e0 = await counts(ENGINE_SCHEMA, engineTables), o0 = await counts('stripe_billing', oursTables);
        const net0 = tcpConnects + stripeHits;
        let engineErr = null;
        await engine.processWebhook(body, header).catch((e) => { engineErr = e.message; });
        const netUsed = tcpConnects + stripeHits - net0;
        const [{ outcome }] = (await pool.query('SELECT stripe_billing.stripe_handle_webhook($1, $2) AS outcome', [body, header])).rows;
        const e1 = await counts(ENGINE_SCHEMA, engineTables), o1 = await counts('stripe_billing', oursTables);
        const reason = engineErr ? `engine: ${engineErr}${netUsed ? ` (it called the Stripe API: ${netUsed} connection(s))` : ''}`
            : netUsed ? `engine called the Stripe API (${netUsed} connection(s))`
            : outcome !== 'applied' ? `ours: ${outcome}` : null;
        if (reason) skipped.push(`${f.event.type} [${f.name}]: ${reason}`);
        else used.push({ ...f, engineRows: diff(e0, e1), oursRows: diff(o0, o1) });
    }
    stripeHits = 0; tcpConnects = 0; tcpTargets.length = 0;
    console.log(`mixed workload uses ${used.length} fixtures:`);
    for (const f of used) console.log(`  ${f.event.type.padEnd(48)} engine rows/event: ${fmtRows(f.engineRows)}; ours: ${fmtRows(f.oursRows)}`);
    console.log(`skipped for all three contenders (${skipped.length}):`);
    for (const s of skipped) console.log(`  ${s}`);
    const single = used.filter((f) => f.name.endsWith('supabase-stripe-sync-engine/customer.subscription.updated.json'));
    if (single.length !== 1) throw new Error('customer.subscription.updated fixture not usable');

    const walRanges = [];
    const summary = {};
    for (const [wl, wlFixtures] of [['single', single], ['mixed', used]]) {
        const sample = payloadSet(wlFixtures, 'size', N);
        const bytes = Math.round(sample.reduce((a, p) => a + Buffer.byteLength(p.body), 0) / N);
        console.log(`\n== workload ${wl}: ${N} events per round (payloads ${bytes} bytes on average), ${CONCURRENCY} in flight; round 0 is the warm-up (not counted)`);
        const rec = Object.fromEntries(CONTENDERS.map((c) => [c, []]));
        const done = Object.fromEntries(CONTENDERS.map((c) => [c, { rows: {}, outcomes: {} }]));
        for (let r = 0; r <= ROUNDS; r++) {
            const tag = `${wl[0]}${r}`;
            const set = payloadSet(wlFixtures, tag, N);
            const expectEngine = {};
            for (let i = 0; i < N; i++)
                for (const [t, v] of Object.entries(wlFixtures[i % wlFixtures.length].engineRows)) expectEngine[t] = (expectEngine[t] || 0) + v;
            const t = Math.floor(Date.now() / 1000);
            for (const p of set) p.header = sign(p.body, t);
            for (const c of CONTENDERS) {
                await q('VACUUM (ANALYZE)');
                const schema = c === 'engine' ? ENGINE_SCHEMA : c === 'ours' ? 'stripe_billing' : 'public';
                const tables = c === 'engine' ? engineTables : c === 'ours' ? oursTables : ['plain'];
                const rows0 = await counts(schema, tables);
                await flushStats([pool, enginePool]);
                const s0 = await snapshot();
                const net0 = tcpConnects + stripeHits;
                const res = await race(contender[c], set);
                await flushStats([pool, enginePool]);
                const s1 = await snapshot();
                const netUsed = tcpConnects + stripeHits - net0;
                const rows = diff(rows0, await counts(schema, tables));
                const [{ bytes }] = await q('SELECT pg_wal_lsn_diff($2, $1)::bigint AS bytes', [s0.lsn, s1.lsn]);
                const walPerEvent = Number(bytes) / N;
                const rate = N / res.secs;
                let extra = '';
                if (c === 'ours') {
                    const led = {};
                    for (const x of await q(`SELECT outcome, count(*)::int AS n FROM stripe_billing.events WHERE id LIKE $1 GROUP BY 1`, [`evt_peer${tag}n%`]))
                        led[x.outcome] = x.n;
                    const ret = tally(res.results.filter((x) => x !== undefined));
                    extra = `; returned: ${fmtTally(ret)}; ledger: ${fmtTally(led)}`;
                    if ((ret.applied || 0) !== N || (led.applied || 0) !== N)
                        fail(`${wl} round ${r}: ours did not apply every event (returned: ${fmtTally(ret)}; ledger: ${fmtTally(led)})`);
                    if (r > 0) for (const [k, v] of Object.entries(led)) done.ours.outcomes[k] = (done.ours.outcomes[k] || 0) + v;
                }
                if (c === 'engine') {
                    const missing = Object.entries(expectEngine).filter(([tb, v]) => (rows[tb] || 0) < v);
                    if (missing.length) fail(`${wl} round ${r}: engine rows missing: ${missing.map(([tb, v]) => `${tb} ${rows[tb] || 0} of ${v}`).join(', ')}`);
                }
                if (c === 'insert' && (rows.plain || 0) !== N) fail(`${wl} round ${r}: ${rows.plain || 0} plain rows, not ${N}`);
                if (res.errors.length) fail(`${wl} round ${r}: ${c}: ${res.errors.length} errors, first: ${res.errors[0]}`);
                if (netUsed) fail(`${wl} round ${r}: ${c} opened ${netUsed} TCP connection(s): ${tcpTargets.slice(-3).join(', ')}`);
                const walRecs = s1.wal.wal_records - s0.wal.wal_records, fpi = s1.wal.wal_fpi - s0.wal.wal_fpi;
                console.log(`${wl} ${r === 0 ? 'warm-up' : `round ${r}`}  ${c.padEnd(6)} ${String(Math.round(rate)).padStart(6)} events/s  ` +
                    `(${res.secs.toFixed(2)} s)  WAL ${Math.round(walPerEvent)} B/event, ${(walRecs / N).toFixed(1)} records/event, ${fpi} FPI  ` +
                    `rows: ${fmtRows(rows)}${extra}`);
                if (r === 0) continue;
                for (const [k, v] of Object.entries(rows)) done[c].rows[k] = (done[c].rows[k] || 0) + v;
                rec[c].push({ rate, walPerEvent, walRecs, fpi, s0, s1 });
                if (wl === 'single') walRanges.push(`${c} ${r} ${s0.lsn} ${s1.lsn} ${N}`);
            }
        }
        summary[wl] = { rec, done };
    }

    // ------------------------------------------------------------ summary
    const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
    const targets = { single: 0.8, mixed: 0.6 };
    console.log(`\n== summary (${ROUNDS} counted rounds per contender and workload, medians; spread = min-max)`);
    for (const [wl, { rec, done }] of Object.entries(summary)) {
        const m = {}, w = {};
        console.log(`${wl}:`);
        for (const c of CONTENDERS) {
            const rates = rec[c].map((x) => x.rate);
            m[c] = median(rates);
            w[c] = median(rec[c].map((x) => x.walPerEvent));
            console.log(`  ${c.padEnd(6)} ${String(Math.round(m[c])).padStart(6)} events/s  (spread ${Math.round(Math.min(...rates))}-${Math.round(Math.max(...rates))})  ` +
                `WAL ${Math.round(w[c])} B/event  rows landed: ${fmtRows(done[c].rows)}` +
                (c === 'ours' ? `; outcomes (stripe_billing.events): ${fmtTally(done.ours.outcomes)}` : ''));
        }
        const verdict = (ok) => (ok ? 'met' : 'MISSED');
        const oi = m.ours / m.insert, oe = m.ours / m.engine, ww = w.ours / w.insert;
        console.log(`  ours/insert = ${oi.toFixed(2)} (target >= ${targets[wl]}: ${verdict(oi >= targets[wl])})   ` +
            `ours/engine = ${oe.toFixed(2)} (target >= 3: ${verdict(oe >= 3)})   ` +
            `ours WAL/event / insert WAL/event = ${ww.toFixed(2)} (target <= 1.5: ${verdict(ww <= 1.5)})   ` +
            `engine WAL/event / insert WAL/event = ${(w.engine / w.insert).toFixed(2)}`);
    }

    // ------------------------------------------------------------ profile
    const last = Object.fromEntries(CONTENDERS.map((c) => [c, summary.single.rec[c][ROUNDS - 1]]));
    console.log(`\n== profile: single workload, last counted round, per event (pg_stat_user_tables / pg_stat_user_indexes deltas)`);
    for (const c of CONTENDERS) {
        const { s0, s1 } = last[c];
        const lines = [];
        let ins = 0, upd = 0, hot = 0, del = 0;
        for (const [t, v1] of Object.entries(s1.tabs)) {
            const v0 = s0.tabs[t] || [0, 0, 0, 0, 0, 0];
            const d = v1.map((x, i) => (x - v0[i]) / N);
            if (d.every((x) => x === 0)) continue;
            ins += d[0]; upd += d[1]; hot += d[2]; del += d[3];
            lines.push(`    ${t.padEnd(44)} ins ${d[0].toFixed(2)}  upd ${d[1].toFixed(2)} (hot ${d[2].toFixed(2)})  del ${d[3].toFixed(2)}  seq_scan ${d[4].toFixed(2)}  idx_scan ${d[5].toFixed(2)}`);
        }
        for (const [i, v1] of Object.entries(s1.idx)) {
            const v0 = s0.idx[i] || [0, 0];
            if (v1[0] === v0[0]) continue;
            lines.push(`    index ${i.padEnd(38)} scans ${((v1[0] - v0[0]) / N).toFixed(2)}  tuples read ${((v1[1] - v0[1]) / N).toFixed(2)}`);
        }
        console.log(`  ${c}: rows inserted ${ins.toFixed(2)}, updated ${upd.toFixed(2)} (HOT ${hot.toFixed(2)}), deleted ${del.toFixed(2)}; ` +
            `WAL ${Math.round(last[c].walPerEvent)} B, ${(last[c].walRecs / N).toFixed(1)} records, ${last[c].fpi} FPI in the round`);
        lines.forEach((l) => console.log(l));
    }
    fs.writeFileSync(walRangesFile, walRanges.join('\n') + '\n');

    console.log(`\nnetwork: ${tcpConnects} TCP connections opened, ${stripeHits} reached the dead Stripe during the race`);
    await engine.close();
    await pool.end();
    await admin.end();
    dead.close();
    if (failures.length) {
        console.log(`\n${failures.length} check(s) FAILED`);
        process.exit(1);
    }
}
main().catch((e) => { console.error(e); process.exit(1); });
