/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Sending the usage outbox as Billing Meter Events v2: a meter event
 *	  session's token, then batches of events posted to the meter event
 *	  stream, several requests at once.
 *
 * The SQL side (stripe_send_usage) picks and locks the rows, builds the
 * batches and marks each row by its batch's answer; this file only makes
 * the requests.  The session token is a secret valid for 15 minutes: it is
 * kept in this backend's memory only (never in a table, a message or a
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

/* The meter event session's token (TopMemoryContext), and its end. */
static char *session_token = NULL;
static TimestampTz session_expires = 0;

/* Forgets the session token, wiping our copy. */
static void
forget_session(void)
{
	if (session_token)
	{
		explicit_bzero(session_token, strlen(session_token));
		pfree(session_token);
	}
	session_token = NULL;
	session_expires = 0;
}

/* Masks the session token wherever it appears in s (an echoing upstream). */
static void
scrub_token(char *s)
{
	char	   *hit;

	if (s == NULL || session_token == NULL || session_token[0] == '\0')
		return;
	while ((hit = strstr(s, session_token)) != NULL)
		memset(hit, '*', strlen(session_token));
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
 * Makes a meter event session (POST /v2/billing/meter_event_session with
 * the API key).  Returns NULL when it did, else the failed response.
 */
static SbHttpResponse *
new_session(void)
{
	char	   *body = "{}";
	SbHttpResponse *r;
	Jsonb	   *session;
	char	   *token;

	forget_session();
	sb_check_settings();
	r = sb_http_post_all(sb_api_base, SESSION_PATH, &body, 1, sb_api_key, 1)[0];
	if (r->status / 100 != 2)
		return r;
	session = sb_parse_body(r);
	token = sb_object_string(session, "authentication_token");

	/* it goes into a header line: nothing that could end or split one */
	if (token == NULL || token[0] == '\0' ||
		strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.") != strlen(token))
	{
		r->status = 0;
		r->network_error = "the meter event session has no usable authentication_token";
		return r;
	}
	session_token = MemoryContextStrdup(TopMemoryContext, token);
	session_expires = session_end(sb_object_string(session, "expires_at"));
	explicit_bzero(token, strlen(token));
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
 * stripe_billing._meter_stream_send(bodies text[]) -> jsonb
 *
 * POSTs each body (a JSON {"events": [...]}) to the meter event stream at
 * stripe_billing.meter_events_base, stripe_billing.usage_concurrency at
 * once, with a meter event session made as needed.  Returns a JSON array,
 * one {"status", "code", "message"} per body in order: status 0 when no
 * answer came (then message says why), or when no session could be made
 * (every body then carries that failure).
 */
Datum
stripe_meter_stream_send(PG_FUNCTION_ARGS)
{
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **bodies;
	SbHttpResponse **responses;
	SbHttpResponse *failed = NULL;
	JsonbParseState *state = NULL;

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
		if (session_token == NULL || GetCurrentTimestamp() >= session_expires - SESSION_MARGIN)
			failed = new_session();
		if (failed == NULL)
		{
			int		   *again = palloc(sizeof(int) * n);
			int			n_again = 0;

			responses = sb_http_post_all(sb_meter_events_base, STREAM_PATH, bodies, n,
										 session_token, sb_usage_concurrency);

			/* the session ended before Stripe thought: a new one, those once more */
			for (int i = 0; i < n; i++)
				if (session_expired(responses[i]))
					again[n_again++] = i;
			if (n_again > 0 && (failed = new_session()) == NULL)
			{
				char	  **retry = palloc(sizeof(char *) * n_again);
				SbHttpResponse **answers;

				for (int k = 0; k < n_again; k++)
					retry[k] = bodies[again[k]];
				answers = sb_http_post_all(sb_meter_events_base, STREAM_PATH, retry, n_again,
										   session_token, sb_usage_concurrency);
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
