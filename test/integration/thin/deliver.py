#!/usr/bin/python3
"""Delivers thin notifications (test/integration/thin_events.sh, bench/thin.sh)
as an event destination does: each body with its Stripe-Signature header
through stripe_handle_webhook, one transaction each.

    deliver.py --db DB [--duplicates 0.3] [--seed 1] [--sessions 1] [--rate N]
               [--no-shuffle] [--apply-events] < notifications.json

reads {"notifications": [{id, type, body, signature}, ...]} (the fake's
POST /_fake/thin_events/notifications) on stdin, shuffles them (seeded),
delivers a share of them twice, through SESSIONS sessions (at most N a
second in all with --rate), and prints
{"delivered": n, "outcomes": {outcome: n}, "raised": n, "errors": [...],
"ms": [per call]} on stdout.  With --apply-events the input is
{"events": [...]} (snapshot events, applied in their order with
stripe_apply_events: the snapshot twin).  The server is reached through
libpq's environment.
"""
import argparse
import collections
import json
import random
import sys
import threading
import time

import psycopg

HANDLE = "SELECT stripe_billing.stripe_handle_webhook(%s::bytea, %s)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--duplicates", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--no-shuffle", action="store_true")
    parser.add_argument("--apply-events", action="store_true")
    args = parser.parse_args()
    given = json.load(sys.stdin)

    if args.apply_events:
        with psycopg.connect(dbname=args.db, autocommit=True) as conn:
            rows = conn.execute("SELECT outcome, count(*) FROM stripe_billing.stripe_apply_events("
                                "ARRAY(SELECT jsonb_array_elements(%s::jsonb)), 'twin') GROUP BY 1",
                                (json.dumps(given["events"]),)).fetchall()
        print(json.dumps({"applied_events": len(given["events"]), "outcomes": dict(rows)}))
        return

    rng = random.Random(args.seed)
    notes = list(given["notifications"])
    notes += [n for n in notes if rng.random() < args.duplicates]
    if not args.no_shuffle:
        rng.shuffle(notes)
    started = time.perf_counter()
    sent = [0]
    outcomes = collections.Counter()
    errors = []
    ms = []
    lock = threading.Lock()
    work = iter(notes)

    def session():
        with psycopg.connect(dbname=args.db, autocommit=True) as conn:
            while True:
                with lock:
                    note = next(work, None)
                    due = started + sent[0] / args.rate if args.rate > 0 else 0
                    sent[0] += 1
                if note is None:
                    return
                if due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                began = time.perf_counter()
                try:
                    outcome = conn.execute(HANDLE, (note["body"].encode(), note["signature"])).fetchone()[0]
                except psycopg.Error as e:
                    outcome = None
                    with lock:
                        errors.append(f"{note['id']}: {e.sqlstate} {e}".strip()[:300])
                took = (time.perf_counter() - began) * 1000
                with lock:
                    ms.append(round(took, 3))
                    if outcome:
                        outcomes[outcome] += 1

    threads = [threading.Thread(target=session) for _ in range(max(args.sessions, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"delivered": len(notes), "outcomes": dict(outcomes), "raised": len(errors),
                      "errors": errors[:5], "ms": ms}))


if __name__ == "__main__":
    main()
