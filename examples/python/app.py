"""A FastAPI + psycopg 3 app using stripe_billing.

    POST /stripe/webhook   Stripe's webhooks, verified and applied by the database
    POST /checkout         a Checkout session for the signed-in user
    GET  /reports          a page gated by row-level security on the user's plan

The signed-in user is the X-User header here (stand-in for your session
middleware).  The connection comes from the usual PG* variables; run with
    uvicorn app:app --port 8000
"""
import json
import logging

import psycopg
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("app")
# prepare_threshold=None: no server-side prepared statements, so the app
# also works behind PgBouncer in transaction mode
pool = AsyncConnectionPool(kwargs={"prepare_threshold": None}, min_size=1, max_size=4, open=False)
app = FastAPI()


@app.on_event("startup")
async def open_pool():
    await pool.open()


@app.on_event("shutdown")
async def close_pool():
    await pool.close()


def answer_for(code):
    """What the caller is told for each SQLSTATE: an answer, never the details."""
    if code.startswith(("SBS", "SBE")):
        return 400, "invalid webhook"
    if code in ("22023", "22004"):
        return 400, "invalid request"
    if code == "SBA01":
        return 400, "the payment provider refused the request"
    if code == "SBA02":
        return 402, "the card was declined"
    if code == "P0002":
        return 404, "no billing account yet"
    if code == "55000":
        return 409, "not possible for this subscription"
    if code in ("SBA04", "SBA05", "SBA07", "40001", "40P01", "55P03", "57014"):
        return 503, "try again"  # retry, with the same idempotency key
    return 500, "server error"  # configuration, bugs


def fail(where, e):
    diag = e.diag
    log.error(json.dumps({"where": where, "code": e.sqlstate, "message": diag.message_primary,
                          "detail": diag.message_detail, "hint": diag.message_hint}))
    status, message = answer_for(e.sqlstate or "")
    return JSONResponse({"error": message}, status_code=status)


@app.post("/stripe/webhook")
async def webhook(request: Request, stripe_signature: str | None = Header(default=None)):
    body = await request.body()  # the raw bytes: the signature is over them
    try:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT stripe_billing.stripe_handle_webhook(%s::bytea, %s)",
                                     (body, stripe_signature))
            (outcome,) = await cur.fetchone()
        return {"outcome": outcome}
    except psycopg.Error as e:
        return fail("webhook", e)


@app.post("/checkout")
async def checkout(request: Request, x_user: str | None = Header(default=None),
                   idempotency_key: str | None = Header(default=None)):
    if not x_user:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    wanted = await request.json()
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(
                """SELECT url, trial_granted FROM stripe_billing.stripe_create_checkout(
                     %s, %s, %s, %s, trial_days => %s, metadata => %s, idempotency_key => %s)""",
                (x_user, wanted.get("price"), "https://app.example/welcome", "https://app.example/pricing",
                 wanted.get("trial_days"), json.dumps(wanted.get("metadata") or {}), idempotency_key))
            url, trial_granted = await cur.fetchone()
        return {"url": url, "trial_granted": trial_granted}
    except psycopg.Error as e:
        return fail("checkout", e)


@app.get("/reports")
async def reports(x_user: str | None = Header(default=None)):
    if not x_user:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    try:
        async with pool.connection() as conn:
            # the user is set for this transaction only: safe on pooled connections
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.user_ref', %s, true)", (x_user,))
                cur = await conn.execute("SELECT id, title FROM reports ORDER BY id")
                rows = await cur.fetchall()
        return {"reports": [{"id": i, "title": t} for i, t in rows]}
    except psycopg.Error as e:
        return fail("reports", e)
