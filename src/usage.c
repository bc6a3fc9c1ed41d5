/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Sending the usage outbox as Billing Meter Events v2: a meter event
 *	  session's token, then batches of events posted to the meter event
 *	  stream, several requests at once.
 *
 * The SQL side (stripe_send_usage) picks and locks the rows, groups them by
 * account, builds the batches and marks each row by its batch's answer;
 * this file only makes the requests.  A session is an account's: the
 * platform's own, or a connected account's (made and used with its
 * Stripe-Account header).  Its token is a secret valid for 15 minutes: it
 * is kept in this backend's memory only (never in a table, a message or a
 * log), made again a minute before it expires, or at once when Stripe
 * answers that it has, and the refused batches are then sent once more.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_meter_stream_send);

#define SESSION_PATH "/v2/billing/meter_event_session"
#define STREAM_PATH "/v2/billing/meter_event_stream"

/* A session is made again this long before Stripe says it expires (us). */
#define SESSION_MARGIN (60 * USECS_PER_SEC)

/*
 * One account's meter event session (in TopMemoryContext): its token and
 * its end.  The sessions of the accounts whose usage this backend sent are
 * kept in a list, each until it expires.
 */
typedef struct MeterSession
{
	char	   *account;		/* NULL: the platform's own */
	char	   *token;
	TimestampTz expires;
	struct MeterSession *next;
} MeterSession;

static MeterSession *sessions = NULL;

/* Forgets a session (unlinked by the caller), wiping our copy of its token. */
static void
free_session(MeterSession *session)
{
	explicit_bzero(session->token, strlen(session->token));
	pfree(session->token);
	if (session->account)
		pfree(session->account);
	pfree(session);
}

/* Forgets account's session, if there is one. */
static void
forget_session(const char *account)
{
	for (MeterSession **link = &sessions; *link; link = &(*link)->next)
	{
		MeterSession *session = *link;

		if (sb_same_account(session->account, account))
		{
			*link = session->next;
			free_session(session);
			return;
		}
	}
}

/*
 * Account's session when it is good for a while yet (not within
 * SESSION_MARGIN of its end), else NULL; the sessions past their margin,
 * any account's, are forgotten on the way.
 */
static MeterSession *
usable_session(const char *account)
{
	TimestampTz now = GetCurrentTimestamp();
	MeterSession *found = NULL;
	MeterSession **link = &sessions;

	while (*link)
	{
		MeterSession *session = *link;

		if (now >= session->expires - SESSION_MARGIN)
		{
			*link = session->next;
			free_session(session);
			continue;
		}
		if (sb_same_account(session->account, account))
			found = session;
		link = &session->next;
	}
	return found;
}

/*
 * Masks every session token this backend keeps wherever it appears in s
 * (an echoing upstream), and the other secrets.
 */
static void
scrub_token(char *s)
{
	if (s == NULL)
		return;
	for (MeterSession *session = sessions; session; session = session->next)
	{
		char	   *hit;

		if (session->token[0] == '\0')
			continue;
		while ((hit = strstr(s, session->token)) != NULL)
			memset(hit, '*', strlen(session->token));
	}
	sb_scrub_secrets(s);
}

/*
 * When Stripe says a session expires ("2026-01-01T12:15:00.000Z"), or 15
 * minutes from now when the answer does not say so readably; never later
 * than that.
 */
static TimestampTz
session_end(const char *expires_at)
{
	TimestampTz latest = GetCurrentTimestamp() + 15 * 60 * USECS_PER_SEC;
	struct pg_tm tm;
	TimestampTz end;

	memset(&tm, 0, sizeof(tm));
	if (expires_at == NULL ||
		sscanf(expires_at, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			   &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6 ||
		tm2timestamp(&tm, 0, NULL, &end) != 0)
		return latest;
	return Min(end, latest);
}

/*
 * A response's error code and message (Stripe's, or the transport's), for
 * the caller's row marks; secrets masked.
 */
static void
response_error(SbHttpResponse *r, char **code, char **message)
{
	Jsonb	   *body = r->status != 0 ? sb_parse_body(r) : NULL;
	JsonbValue	buf;
	JsonbValue *error = NULL;

	*code = NULL;
	*message = NULL;
	if (body && JB_ROOT_IS_OBJECT(body))
		error = getKeyJsonValueFromContainer(&body->root, "error", 5, &buf);
	if (error && error->type == jbvBinary && JsonContainerIsObject(error->val.binary.data))
	{
		Jsonb	   *e = JsonbValueToJsonb(error);

		*code = sb_object_string(e, "code");
		*message = sb_object_string(e, "message");
	}
	if (*message == NULL)
		*message = r->status == 0 ?
			psprintf("request failed: %s", r->network_error ? r->network_error : "no response") :
			psprintf("HTTP %d%s", r->status, body ? "" : ", a response that is not JSON");
	scrub_token(*message);
	scrub_token(*code);
}

/*
 * Makes account's meter event session (POST /v2/billing/meter_event_session
 * with the API key, and Stripe-Account unless account is NULL), kept in
 * *made.  Returns NULL when it did, else the failed response.
 */
static SbHttpResponse *
new_session(const char *account, MeterSession **made)
{
	char	   *body = "{}";
	SbHttpResponse *r;
	Jsonb	   *answer;
	char	   *token;
	MeterSession *session;

	forget_session(account);
	*made = NULL;
	sb_check_settings();
	r = sb_http_post_all(sb_api_base, SESSION_PATH, &body, 1, sb_api_key, 1, account)[0];
	if (r->status / 100 != 2)
		return r;
	answer = sb_parse_body(r);
	token = sb_object_string(answer, "authentication_token");

	/* it goes into a header line: nothing that could end or split one */
	if (token == NULL || token[0] == '\0' ||
		strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.") != strlen(token))
	{
		r->status = 0;
		r->network_error = "the meter event session has no usable authentication_token";
		return r;
	}
	session = MemoryContextAllocZero(TopMemoryContext, sizeof(MeterSession));
	session->token = MemoryContextStrdup(TopMemoryContext, token);
	session->account = account ? MemoryContextStrdup(TopMemoryContext, account) : NULL;
	session->expires = session_end(sb_object_string(answer, "expires_at"));
	session->next = sessions;
	sessions = session;
	explicit_bzero(token, strlen(token));
	*made = session;
	return NULL;
}

/* Did Stripe refuse this request for an expired session? */
static bool
session_expired(SbHttpResponse *r)
{
	char	   *code;
	char	   *message;

	if (r->status != 401)
		return false;
	response_error(r, &code, &message);
	return code && strcmp(code, "billing_meter_event_session_expired") == 0;
}

/* One result element: {"status": n, "code": text, "message": text}. */
static void
push_result(JsonbParseState **state, SbHttpResponse *r)
{
	JsonbValue	key;
	JsonbValue	val;
	char	   *code = NULL;
	char	   *message = NULL;

	if (r->status / 100 != 2)
		response_error(r, &code, &message);
	pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	key.type = jbvString;
	key.val.string.val = "status";
	key.val.string.len = 6;
	pushJsonbValue(state, WJB_KEY, &key);
	val.type = jbvNumeric;
	val.val.numeric = int64_to_numeric(r->status);
	pushJsonbValue(state, WJB_VALUE, &val);
	for (int k = 0; k < 2; k++)
	{
		char	   *v = k == 0 ? code : message;

		key.val.string.val = k == 0 ? "code" : "message";
		key.val.string.len = strlen(key.val.string.val);
		pushJsonbValue(state, WJB_KEY, &key);
		if (v)
		{
			val.type = jbvString;
			val.val.string.val = v;
			val.val.string.len = strlen(v);
		}
		else
			val.type = jbvNull;
		pushJsonbValue(state, WJB_VALUE, &val);
	}
	pushJsonbValue(state, WJB_END_OBJECT, NULL);
}

/*
 * stripe_billing._meter_stream_send(bodies text[], account text) -> jsonb
 *
 * POSTs each body (a JSON {"events": [...]}) to the meter event stream at
 * stripe_billing.meter_events_base, stripe_billing.usage_concurrency at
 * once, as account's (Stripe-Account; NULL: the platform's), with a meter
 * event session of that account made as needed.  Returns a JSON array,
 * one {"status", "code", "message"} per body in order: status 0 when no
 * answer came (then message says why), or when no session could be made
 * (every body then carries that failure).  (Before 0.4.0's ALTER EXTENSION
 * UPDATE, STRICT and without account.)
 */
Datum
stripe_meter_stream_send(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 1);
	ArrayType  *array;
	MeterSession *session;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **bodies;
	SbHttpResponse **responses;
	SbHttpResponse *failed = NULL;
	JsonbParseState *state = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("bodies must not be NULL")));
	array = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	bodies = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("bodies[%d] must not be NULL", i + 1)));
		bodies[i] = TextDatumGetCString(elems[i]);
	}
	responses = palloc0(sizeof(SbHttpResponse *) * Max(n, 1));

	if (n > 0)
	{
		sb_check_meter_events_base(sb_meter_events_base);
		if ((session = usable_session(account)) == NULL)
			failed = new_session(account, &session);
		if (failed == NULL)
		{
			int		   *again = palloc(sizeof(int) * n);
			int			n_again = 0;

			responses = sb_http_post_all(sb_meter_events_base, STREAM_PATH, bodies, n,
										 session->token, sb_usage_concurrency, account);

			/* the session ended before Stripe thought: a new one, those once more */
			for (int i = 0; i < n; i++)
				if (session_expired(responses[i]))
					again[n_again++] = i;
			if (n_again > 0 && (failed = new_session(account, &session)) == NULL)
			{
				char	  **retry = palloc(sizeof(char *) * n_again);
				SbHttpResponse **answers;

				for (int k = 0; k < n_again; k++)
					retry[k] = bodies[again[k]];
				answers = sb_http_post_all(sb_meter_events_base, STREAM_PATH, retry, n_again,
										   session->token, sb_usage_concurrency, account);
				for (int k = 0; k < n_again; k++)
					responses[again[k]] = answers[k];
			}
			else if (n_again > 0)
				for (int k = 0; k < n_again; k++)
					responses[again[k]] = failed;
			failed = NULL;
		}
	}

	pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < n; i++)
		push_result(&state, failed ? failed : responses[i]);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_ARRAY, NULL)));
}
