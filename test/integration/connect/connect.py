#!/usr/bin/python3
"""The Connect test's client (test/integration/connect.sh): reads the fake
Stripe's platform and connected accounts, delivers their events as signed
webhooks, and compares the database with the fake.

    connect.py fetch    --fake URL --key KEY --out FILE [--accounts A,B] [--newest N]
        every event of the platform and of each connected account (GET
        /v1/events with Stripe-Account, as a Connect endpoint would get
        them), one JSON object per line appended to FILE; or those of the
        given accounts, or their newest N
    connect.py deliver  --db DB --events FILE --secret WHSEC --connect-secret WHSEC
                        [--sessions 8] [--duplicates 0.25] [--seed 1] [--resume-worker]
        the events shuffled (seeded), a share of them twice, through
        SESSIONS concurrent sessions, one transaction per webhook: the
        platform's signed with the platform endpoint's secret, a connected
        account's with the Connect endpoint's
    connect.py compare  --db DB --fake URL --key KEY
        each account's customers, subscriptions (their items' prices),
        invoices and events at the fake against the rows of that account
        here; and every row's account against the fake's
    connect.py features --db DB --fake URL --key KEY --basic-account ACCT
        every user's features against those the grants give (see
        expected_features)

Each prints one JSON object on stdout.  The server is reached through
libpq's environment (PGHOST, PGPORT, PGUSER).
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
import urllib.parse
import urllib.request

import psycopg

HANDLE = "SELECT stripe_billing.stripe_handle_webhook(%s::bytea, %s)"


def get(fake, key, path, params=None, account=None):
    url = f"{fake}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    headers = {"Authorization": f"Bearer {key}"}
    if account:
        headers["Stripe-Account"] = account
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as res:
        return json.load(res)


def list_all(fake, key, path, account=None, **params):
    """Every object of a list endpoint, newest first, paging with starting_after."""
    out, after = [], None
    while True:
        page = get(fake, key, path, dict(params, limit=100, **({"starting_after": after} if after else {})), account)
        out.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            return out
        after = page["data"][-1]["id"]


def accounts_of(fake):
    with urllib.request.urlopen(f"{fake}/_fake/accounts", timeout=60) as res:
        return [a["id"] for a in json.load(res)]


def cmd_fetch(args):
    n = collections.Counter()
    targets = args.accounts.split(",") if args.accounts else [None] + accounts_of(args.fake)
    with open(args.out, "a") as out:
        for account in targets:
            events = (get(args.fake, args.key, "/v1/events", {"limit": args.newest}, account)["data"]
                      if args.newest else list_all(args.fake, args.key, "/v1/events", account))
            for e in reversed(events):
                # (a connected account's events name it, as its deliveries do)
                if account and e.get("account") != account:
                    sys.exit(f"event {e['id']} listed for {account} names account {e.get('account')!r}")
                out.write(json.dumps(e) + "\n")
                n[account or "platform"] += 1
    print(json.dumps({"events": sum(n.values()), "platform": n["platform"], "accounts": len(n) - 1}))


def sign(body, secret):
    t = int(time.time())
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def cmd_deliver(args):
    with open(args.events) as f:
        events = [json.loads(line) for line in f]
    rng = random.Random(args.seed)
    deliveries = events + rng.sample(events, int(len(events) * args.duplicates))
    rng.shuffle(deliveries)
    work = queue.Queue()
    for e in deliveries:
        work.put(e)
    results, pids, lock = [], [], threading.Lock()
    conns = [psycopg.connect(dbname=args.db, autocommit=True, application_name="connect_webhooks")
             for _ in range(args.sessions)]
    for c in conns:
        pids.append(c.info.backend_pid)
    start = threading.Barrier(args.sessions + 1)

    def session(conn):
        start.wait()
        mine = []
        while True:
            try:
                e = work.get_nowait()
            except queue.Empty:
                break
            body = json.dumps(e, indent=2).encode()
            secret = args.connect_secret if e.get("account") else args.secret
            try:
                outcome = conn.execute(HANDLE, (body, sign(body, secret))).fetchone()[0]
                mine.append({"id": e["id"], "outcome": outcome})
            except psycopg.Error as err:
                mine.append({"id": e["id"], "sqlstate": err.sqlstate, "error": str(err).splitlines()[0]})
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=session, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    if args.resume_worker:
        with psycopg.connect(dbname=args.db, autocommit=True) as c:
            c.execute("SELECT stripe_billing.stripe_sync_resume(), pg_reload_conf()")
    t0 = time.time()
    start.wait()
    for t in threads:
        t.join()
    seconds = time.time() - t0
    for c in conns:
        c.close()
    outcomes = collections.Counter(r["outcome"] for r in results if "outcome" in r)
    errors = collections.Counter(f'{r["sqlstate"]} {r["error"]}' for r in results if "sqlstate" in r)
    print(json.dumps({"events": len(events), "delivered": len(results), "outcomes": dict(outcomes),
                      "raised": sum(errors.values()), "errors": dict(errors), "pids": pids,
                      "seconds": round(seconds, 1)}))


def rows(conn, sql, *params):
    return conn.execute(sql, params).fetchall()


def cmd_compare(args):
    conn = psycopg.connect(dbname=args.db, autocommit=True)
    problems = []
    counts = collections.Counter()
    owner = {}   # object id -> the account the fake holds it in
    for account in [None] + accounts_of(args.fake):
        a = account or "platform"
        fake = {
            "customers": {c["id"]: (c["email"], json.dumps(c["metadata"], sort_keys=True))
                          for c in list_all(args.fake, args.key, "/v1/customers", account)},
            "subscriptions": {s["id"]: (s["customer"], s["status"], s["cancel_at_period_end"],
                                        ",".join(sorted(i["price"]["id"] for i in s["items"]["data"])))
                              for s in list_all(args.fake, args.key, "/v1/subscriptions", account, status="all")},
            "invoices": {i["id"]: (i["customer"], i["status"], i["amount_paid"])
                         for i in list_all(args.fake, args.key, "/v1/invoices", account)},
            "events": {e["id"]: (e["type"],) for e in list_all(args.fake, args.key, "/v1/events", account)},
        }
        local = {
            "customers": {r[0]: (r[1], json.dumps(r[2], sort_keys=True)) for r in rows(conn,
                "SELECT id, email, metadata FROM stripe_billing.customers WHERE account IS NOT DISTINCT FROM %s",
                account)},
            "subscriptions": {r[0]: tuple(r[1:]) for r in rows(conn,
                """SELECT s.id, s.customer, s.status, s.cancel_at_period_end,
                          (SELECT string_agg(i.price, ',' ORDER BY i.price) FROM stripe_billing.subscription_items i
                            WHERE i.subscription = s.id AND NOT i.deleted AND i.account IS NOT DISTINCT FROM s.account)
                     FROM stripe_billing.subscriptions s WHERE s.account IS NOT DISTINCT FROM %s""", account)},
            "invoices": {r[0]: tuple(r[1:]) for r in rows(conn,
                "SELECT id, customer, status, amount_paid FROM stripe_billing.invoices "
                "WHERE account IS NOT DISTINCT FROM %s", account)},
            "events": {r[0]: (r[1],) for r in rows(conn,
                "SELECT id, type FROM stripe_billing.events WHERE account IS NOT DISTINCT FROM %s", account)},
        }
        for table in fake:
            for oid in fake[table]:
                owner[oid] = a
            counts[table] += len(fake[table])
            missing = fake[table].keys() - local[table].keys()
            extra = local[table].keys() - fake[table].keys()
            differ = [k for k in fake[table].keys() & local[table].keys() if fake[table][k] != local[table][k]]
            if missing or extra or differ:
                problems.append(f"{a} {table}: {len(missing)} missing, {len(extra)} not the account's, "
                                f"{len(differ)} differ" +
                                (f" (e.g. {differ[0]}: fake {fake[table][differ[0]]}, here {local[table][differ[0]]})"
                                 if differ else "") +
                                (f" (e.g. {sorted(missing)[0]} missing)" if missing else ""))
    # every row of these tables belongs to an account of the fake, as its account
    wrong = rows(conn, """SELECT 'subscription_items', i.id, coalesce(i.account, 'platform'), coalesce(s.account, 'platform')
                            FROM stripe_billing.subscription_items i JOIN stripe_billing.subscriptions s ON s.id = i.subscription
                           WHERE i.account IS DISTINCT FROM s.account""")
    for table, oid, here, expected in wrong[:5]:
        problems.append(f"{table} {oid}: account {here}, its subscription's {expected}")
    print(json.dumps({"problems": problems, "compared": dict(counts), "items_wrong_account": len(wrong)}))


def expected_features(fake, key, accounts, basic_account):
    """user -> features, from the grants test/integration/connect.sh makes:
    lookup key 'pro' gives 'pro@<account>' (the platform: 'pro@platform') on
    every account, and product prod_basic gives 'basic@<basic_account>' on
    that account only.  A user has a grant's feature while a subscription
    of a customer whose metadata names the user is active (or trialing)
    with an item matching the grant on that account."""
    out = collections.defaultdict(set)
    for account in [None] + accounts:
        a = account or "platform"
        users = {c["id"]: c["metadata"].get("user_ref") for c in list_all(fake, key, "/v1/customers", account)}
        for s in list_all(fake, key, "/v1/subscriptions", account, status="all"):
            user = users.get(s["customer"])
            if not user or s["status"] not in ("active", "trialing"):
                continue
            for item in s["items"]["data"]:
                price = item["price"]
                if price.get("lookup_key") == "pro":
                    out[user].add(f"pro@{a}")
                if account == basic_account and price["product"] == "prod_basic":
                    out[user].add(f"basic@{a}")
    return out


def basic_elsewhere(fake, key, accounts, basic_account):
    """Users with a live subscription to prod_basic on an account other than basic_account."""
    out = set()
    for account in [None] + [a for a in accounts if a != basic_account]:
        users = {c["id"]: c["metadata"].get("user_ref") for c in list_all(fake, key, "/v1/customers", account)}
        for s in list_all(fake, key, "/v1/subscriptions", account, status="all"):
            if s["status"] in ("active", "trialing") and users.get(s["customer"]) and any(
                    i["price"]["product"] == "prod_basic" for i in s["items"]["data"]):
                out.add(users[s["customer"]])
    return out


def cmd_features(args):
    conn = psycopg.connect(dbname=args.db, autocommit=True)
    accounts = accounts_of(args.fake)
    expected = expected_features(args.fake, args.key, accounts, args.basic_account)
    here = collections.defaultdict(set)
    for user, feature in rows(conn, "SELECT user_ref, feature FROM stripe_billing.user_features"):
        here[user].add(feature)
    # and the check applications call agrees with the table, user by user
    disagree = [u for u in expected if any(
        not rows(conn, "SELECT stripe_billing.stripe_has_entitlement(%s, %s)", u, f)[0][0] for f in expected[u])]
    wrong = sorted(u for u in expected.keys() | here.keys() if expected[u] != here[u])
    # users with prod_basic on other accounts only: the grant on basic_account must not reach them
    elsewhere = basic_elsewhere(args.fake, args.key, accounts, args.basic_account) - {
        u for u, f in expected.items() if f"basic@{args.basic_account}" in f}
    print(json.dumps({"users": len(expected.keys() | here.keys()),
                      "features": sum(len(v) for v in expected.values()),
                      "accounts_with_features": len({f.split("@")[1] for v in expected.values() for f in v}),
                      "basic_users": sum(1 for v in expected.values() if f"basic@{args.basic_account}" in v),
                      "basic_elsewhere": len(elsewhere),
                      "basic_elsewhere_granted": sum(1 for u in elsewhere if f"basic@{args.basic_account}" in here[u]),
                      "wrong": len(wrong), "check_disagrees": len(disagree),
                      "examples": [{"user": u, "expected": sorted(expected[u]), "here": sorted(here[u])}
                                   for u in wrong[:3]]}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--fake", required=True)
    f.add_argument("--key", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--accounts", help="these connected accounts only (comma-separated)")
    f.add_argument("--newest", type=int, help="each account's newest N events only")
    d = sub.add_parser("deliver")
    d.add_argument("--db", required=True)
    d.add_argument("--events", required=True)
    d.add_argument("--secret", required=True)
    d.add_argument("--connect-secret", required=True)
    d.add_argument("--sessions", type=int, default=8)
    d.add_argument("--duplicates", type=float, default=0.25)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--resume-worker", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("--db", required=True)
    c.add_argument("--fake", required=True)
    c.add_argument("--key", required=True)
    g = sub.add_parser("features")
    g.add_argument("--db", required=True)
    g.add_argument("--fake", required=True)
    g.add_argument("--key", required=True)
    g.add_argument("--basic-account", required=True)
    args = p.parse_args()
    {"fetch": cmd_fetch, "deliver": cmd_deliver, "compare": cmd_compare, "features": cmd_features}[args.cmd](args)


if __name__ == "__main__":
    main()
