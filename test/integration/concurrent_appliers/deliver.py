#!/usr/bin/python3
"""Webhook deliveries for test/integration/concurrent_appliers.sh.

Fetches from the fake Stripe every event listed after an event id
(GET /v1/events, ending_before, as the worker does) and hands them to
stripe_billing.stripe_handle_webhook, each signed as Stripe signs a delivery
(header t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the whole
whsec_ string>), one transaction per webhook.

    deliver.py list   --fake URL --key KEY --after EVT --out FILE
        the events, oldest first: ord, id, type, created, user (TSV)
    deliver.py stress --fake URL --key KEY --after EVT --secret WHSEC --db DB
                      [--sessions 8] [--seed 1] [--pace-ms 0] [--resume-worker] [--out FILE]
        shuffled (seeded), through SESSIONS concurrent sessions; every
        delivery's outcome or error (SQLSTATE, message) to FILE (JSON lines);
        --resume-worker: stripe_sync_resume() and a reload (which wakes the
        worker) the moment the sessions start, so that polling and webhooks
        start together
    deliver.py replay --fake URL --key KEY --after EVT --secret WHSEC --db DB
        one after another, in the listed (created) order, one session
    deliver.py race   --fake URL --key KEY --after EVT --secret WHSEC --db DB
                      [--start gate|client] [--out FILE]
        per lifecycle (one per user): every event but checkout.session.completed
        and customer.subscription.deleted one after another; then, user by
        user, those two at the same moment in two sessions: with --start gate
        (the default) each webhook's transaction first waits on an advisory
        lock that is released once both wait, so the two start within
        microseconds; with client, a barrier in this process releases them
        (a few hundred microseconds apart).  A delivery that raised is
        delivered again afterwards, as Stripe would retry it.  Each round's
        deliveries to FILE (JSON lines)

Each prints one JSON object (a summary) on stdout.  The server is reached
through libpq's environment (PGHOST, PGPORT, PGUSER).
"""
import argparse
import collections
import hashlib
import hmac
import json
import queue
import random
import sys
import threading
import time
import urllib.request

import psycopg

HANDLE = "SELECT stripe_billing.stripe_handle_webhook(%s::bytea, %s)"
START_LOCK = 22007   # the race's starting gate: an advisory lock


def fetch_events(fake, key, after):
    """Every event listed after `after`, oldest first."""
    events, cursor = [], after
    while True:
        req = urllib.request.Request(f"{fake}/v1/events?limit=100&ending_before={cursor}",
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=60) as res:
            page = json.load(res)
        if not page["data"]:
            return events
        events.extend(reversed(page["data"]))  # a page is newest first
        cursor = events[-1]["id"]
        if not page["has_more"]:
            return events


def users_of(events):
    """customer id -> user (client_reference_id of its completed Checkout)."""
    users = {}
    for e in events:
        o = e["data"]["object"]
        if e["type"] == "checkout.session.completed" and o.get("customer"):
            users[o["customer"]] = o.get("client_reference_id")
    return users


def customer_of(event):
    o = event["data"]["object"]
    return o["id"] if o.get("object") == "customer" else o.get("customer")


def body_of(event):
    # Stripe's deliveries are pretty-printed JSON
    return json.dumps(event, indent=2).encode()


def sign(body, secret, t=None):
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def connect(db):
    return psycopg.connect(dbname=db, autocommit=True, application_name="concurrent_appliers")


def deliver(conn, event, secret):
    """One webhook: its outcome, or its error's SQLSTATE and message."""
    body = body_of(event)
    t0 = time.time()
    try:
        outcome = conn.execute(HANDLE, (body, sign(body, secret))).fetchone()[0]
        return {"id": event["id"], "type": event["type"], "t0": t0, "t1": time.time(), "outcome": outcome}
    except psycopg.Error as err:
        return {"id": event["id"], "type": event["type"], "t0": t0, "t1": time.time(),
                "sqlstate": err.sqlstate, "error": str(err).splitlines()[0] if str(err) else repr(err)}


def deliver_at_gate(conn, event, secret):
    """One webhook whose transaction first waits for the starting gate (a
    shared advisory lock that the race holds exclusively until both sides
    wait): BEGIN, the gate, the webhook sent at once (pipeline), COMMIT."""
    body = body_of(event)
    header = sign(body, secret)
    t0 = time.time()
    try:
        with conn.transaction():
            with conn.pipeline():
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (START_LOCK,))
                cur = conn.execute(HANDLE, (body, header))
            outcome = cur.fetchone()[0]
        return {"id": event["id"], "type": event["type"], "t0": t0, "t1": time.time(), "outcome": outcome}
    except psycopg.Error as err:
        return {"id": event["id"], "type": event["type"], "t0": t0, "t1": time.time(),
                "sqlstate": err.sqlstate, "error": str(err).splitlines()[0] if str(err) else repr(err)}


def summary_of(results):
    outcomes = collections.Counter(r["outcome"] for r in results if "outcome" in r)
    errors = collections.Counter(f'{r["sqlstate"]} {r["error"]}' for r in results if "sqlstate" in r)
    return {"delivered": len(results), "outcomes": dict(outcomes),
            "raised": sum(errors.values()), "errors": dict(errors)}


def cmd_list(args):
    events = fetch_events(args.fake, args.key, args.after)
    users = users_of(events)
    with open(args.out, "w") as out:
        for n, e in enumerate(events, 1):
            out.write(f'{n}\t{e["id"]}\t{e["type"]}\t{e["created"]}\t{users.get(customer_of(e)) or ""}\n')
    print(json.dumps({"events": len(events), "users": len(set(users.values()))}))


def cmd_stress(args):
    events = fetch_events(args.fake, args.key, args.after)
    if not events:
        sys.exit("no events to deliver")
    random.Random(args.seed).shuffle(events)
    work = queue.Queue()
    for e in events:
        work.put(e)
    results, pids, lock = [], [], threading.Lock()
    conns = [connect(args.db) for _ in range(args.sessions)]
    start = threading.Barrier(args.sessions + 1)

    def session(n, conn):
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        mine = []
        start.wait()
        while True:
            try:
                e = work.get_nowait()
            except queue.Empty:
                break
            r = deliver(conn, e, args.secret)
            r.update(session=n, pid=pid)
            mine.append(r)
            if args.pace_ms:
                time.sleep(random.uniform(0, 2 * args.pace_ms) / 1000)
        with lock:
            results.extend(mine)
            pids.append(pid)

    threads = [threading.Thread(target=session, args=(n, c)) for n, c in enumerate(conns)]
    for th in threads:
        th.start()
    if args.resume_worker:
        # the paused worker polls at once (a reload wakes it), as the webhooks start
        with connect(args.db) as conn:
            conn.execute("SELECT stripe_billing.stripe_sync_resume()")
            conn.execute("SELECT pg_reload_conf()")
    start.wait()
    for th in threads:
        th.join()
    for c in conns:
        c.close()
    if args.out:
        with open(args.out, "w") as out:
            for r in sorted(results, key=lambda r: r["t0"]):
                out.write(json.dumps(r) + "\n")
    s = summary_of(results)
    s.update(sessions=args.sessions, pids=pids,
             first_start=min(r["t0"] for r in results), last_end=max(r["t1"] for r in results))
    s["seconds"] = round(s["last_end"] - s["first_start"], 3)
    print(json.dumps(s))


def cmd_replay(args):
    events = fetch_events(args.fake, args.key, args.after)
    with connect(args.db) as conn:
        results = [deliver(conn, e, args.secret) for e in events]
    print(json.dumps(summary_of(results)))


RACED = ("checkout.session.completed", "customer.subscription.deleted")


def cmd_race(args):
    events = fetch_events(args.fake, args.key, args.after)
    users = users_of(events)
    pairs = collections.defaultdict(dict)   # customer -> {type: event}
    rest = []
    for e in events:
        if e["type"] in RACED:
            pairs[customer_of(e)][e["type"]] = e
        else:
            rest.append(e)
    customers = [c for c in pairs if len(pairs[c]) == 2]
    with connect(args.db) as conn:
        before = summary_of([deliver(conn, e, args.secret) for e in rest])
    if before["raised"]:
        print(json.dumps({"error": "the rest of the lifecycles raised", "before": before}))
        sys.exit(1)

    conns = [connect(args.db) for _ in RACED]
    pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
    barrier = threading.Barrier(len(RACED) + 1)
    slots = [None] * len(RACED)
    results = []
    current = {}

    gate = connect(args.db)
    apply = deliver_at_gate if args.start == "gate" else deliver

    def side(n):
        while True:
            barrier.wait()            # round starts (or ends the thread)
            e = current.get("pair", {}).get(RACED[n])
            if e is None:
                return
            slots[n] = apply(conns[n], e, args.secret)
            barrier.wait()            # round done

    def waiting_at_gate():
        return gate.execute("""SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0
                                  AND objid = %s AND objsubid = 1 AND NOT granted""", (START_LOCK,)).fetchone()[0]

    threads = [threading.Thread(target=side, args=(n,)) for n in range(len(RACED))]
    for th in threads:
        th.start()
    overlapped = 0
    rounds = []
    for c in customers:
        current["pair"] = pairs[c]
        if args.start == "gate":
            gate.execute("SELECT pg_advisory_lock(%s)", (START_LOCK,))
        barrier.wait()
        if args.start == "gate":
            deadline = time.time() + 30
            while waiting_at_gate() < len(RACED):
                if time.time() > deadline:
                    sys.exit("the race's sessions never reached the gate")
                time.sleep(0.001)
            gate.execute("SELECT pg_advisory_unlock(%s)", (START_LOCK,))
        barrier.wait()
        a, b = slots
        results.extend(slots)
        if max(a["t0"], b["t0"]) < min(a["t1"], b["t1"]):
            overlapped += 1
        rounds.append({"user": users[c], "checkout": a, "deleted": b})
    current.clear()
    barrier.wait()
    for th in threads:
        th.join()

    # a delivery that raised is retried, as Stripe would, one after another
    retried = [r for r in results if "sqlstate" in r]
    by_id = {e["id"]: e for e in events}
    with connect(args.db) as conn:
        again = [deliver(conn, by_id[r["id"]], args.secret) for r in retried]
        raced_users = sorted({users[c] for c in customers})
        rows = conn.execute(
            """SELECT u, stripe_billing.stripe_has_entitlement(u, 'reports'),
                      (SELECT string_agg(DISTINCT s.status, ',') FROM stripe_billing.customers c
                         JOIN stripe_billing.subscriptions s ON s.customer = c.id WHERE c.user_ref = u),
                      (SELECT count(*) FROM stripe_billing.user_features f WHERE f.user_ref = u)
                 FROM unnest(%s::text[]) u""", (raced_users,)).fetchall()
        # how far apart the two reached the ledger (received_at, the server's clock)
        gaps = conn.execute(
            """SELECT percentile_disc(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY abs(extract(epoch FROM a.received_at - b.received_at)))
                 FROM unnest(%s::text[], %s::text[]) p(a, b)
                 JOIN stripe_billing.events a ON a.id = p.a JOIN stripe_billing.events b ON b.id = p.b""",
            ([pairs[c][RACED[0]]["id"] for c in customers], [pairs[c][RACED[1]]["id"] for c in customers])).fetchone()[0]
    for c in conns + [gate]:
        c.close()
    entitled = [u for u, has, status, features in rows if has]
    if args.out:
        with open(args.out, "w") as out:
            for r in rounds:
                r["entitled"] = r["user"] in entitled
                out.write(json.dumps(r) + "\n")
    s = summary_of(results)
    print(json.dumps({
        "users": len(raced_users), "events_before": len(rest), "rounds": len(customers),
        "start": args.start, "overlapped": overlapped, "pids": pids,
        "ledger_gap_us": [round(float(g) * 1e6) for g in gaps or []],
        "outcomes": s["outcomes"], "raised": s["raised"], "errors": s["errors"],
        "retried": summary_of(again),
        "entitled": len(entitled), "entitled_users": entitled,
        "not_canceled": [u for u, has, status, features in rows if status != "canceled"],
        "with_features": [u for u, has, status, features in rows if features],
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["list", "stress", "replay", "race"])
    p.add_argument("--fake", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--after", required=True, help="deliver the events listed after this one")
    p.add_argument("--secret")
    p.add_argument("--db")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pace-ms", type=float, default=0, help="mean pause after each delivery, per session")
    p.add_argument("--out")
    p.add_argument("--resume-worker", action="store_true",
                   help="stress: resume the paused worker, and wake it, as the webhooks start")
    p.add_argument("--start", choices=["gate", "client"], default="gate",
                   help="race: both sides released by an advisory lock they wait on in their transaction "
                        "(gate), or by a barrier in this process (client)")
    args = p.parse_args()
    if args.command != "list" and not (args.secret and args.db):
        p.error("--secret and --db are required")
    if args.command == "list" and not args.out:
        p.error("--out is required")
    {"list": cmd_list, "stress": cmd_stress, "replay": cmd_replay, "race": cmd_race}[args.command](args)


if __name__ == "__main__":
    main()
