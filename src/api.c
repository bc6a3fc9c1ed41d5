/*-------------------------------------------------------------------------
 *
 * api.c
 *	  Stripe API calls from SQL: stripe_api and what it shares with
 *	  stripe_create_checkout (checkout.c) and the portal and subscription
 *	  functions (written in SQL on top).
 *
 * An HTTP call cannot be rolled back with the SQL transaction, so every
 * mutating call carries an Idempotency-Key (the caller's, or a fresh one),
 * and its retries reuse it.  Whatever object Stripe returns is applied to
 * the local tables at once, through the same mapping as events, so the
 * caller's next query sees it; the event Stripe sends later is then
 * harmless.  Stripe's errors become ereports with a mapped SQLSTATE,
 * Stripe's message, and type/code/param in the detail.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "common/jsonapi.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_api);
PG_FUNCTION_INFO_V1(stripe_events_page);

/* Longest wait between retries, whatever Retry-After says (ms). */
#define MAX_RETRY_WAIT_MS 10000

/* Is this (valid) JSON text?  Checked without raising. */
static bool
is_json(char *text, int len)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen(text, len, GetDatabaseEncoding(), false);

	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/* A string field of a jsonb object, or NULL. */
char *
sb_object_string(Jsonb *object, const char *key)
{
	JsonbValue	buf;
	JsonbValue *v;

	if (object == NULL || !JB_ROOT_IS_OBJECT(object))
		return NULL;
	v = getKeyJsonValueFromContainer(&object->root, key, strlen(key), &buf);
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* Stripe's "error" object of an error response, or NULL. */
static Jsonb *
error_object(Jsonb *body)
{
	JsonbValue	buf;
	JsonbValue *v;

	if (body == NULL || !JB_ROOT_IS_OBJECT(body))
		return NULL;
	v = getKeyJsonValueFromContainer(&body->root, "error", 5, &buf);
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		return NULL;
	return JsonbValueToJsonb(v);
}

/* The SQLSTATE of a Stripe error. */
static int
error_sqlstate(int status, const char *type)
{
	if (type && strcmp(type, "idempotency_error") == 0)
		return ERRCODE_SB_API_IDEMPOTENCY;
	if (type && strcmp(type, "card_error") == 0)
		return ERRCODE_SB_API_CARD;
	if (status == 401 || status == 403 ||
		(type && (strcmp(type, "authentication_error") == 0 ||
				  strcmp(type, "permission_error") == 0)))
		return ERRCODE_SB_API_AUTHENTICATION;
	if (status == 429)
		return ERRCODE_SB_API_RATE_LIMIT;
	if (status >= 500 || (type && strcmp(type, "api_error") == 0))
		return ERRCODE_SB_API_SERVER;
	return ERRCODE_SB_API_INVALID_REQUEST;
}

/* Raises the error of a failed response (HTTP error or none at all). */
static void
report_failure(const char *method, const char *path, SbHttpResponse *r, Jsonb *body)
{
	Jsonb	   *error = error_object(body);
	char	   *type = sb_object_string(error, "type");
	char	   *code = sb_object_string(error, "code");
	char	   *param = sb_object_string(error, "param");
	char	   *message = sb_object_string(error, "message");

	if (r->status == 0)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API request %s %s failed: %s", method, path, r->network_error),
				 r->timed_out ?
				 errhint("stripe_billing.connect_timeout and stripe_billing.request_timeout bound each request.") : 0));
	if (body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API request %s %s returned a response that is not JSON (HTTP %d, %d bytes)",
						method, path, r->status, r->body_len),
				 errhint("The response may have been cut short.")));

	ereport(ERROR,
			(errcode(error_sqlstate(r->status, type)),
			 errmsg("Stripe API: %s", message ? message : "request failed"),
			 errdetail("%s %s: HTTP %d, type %s, code %s, param %s, request %s.",
					   method, path, r->status,
					   type ? type : "(none)", code ? code : "(none)",
					   param ? param : "(none)",
					   r->request_id ? r->request_id : "(none)"),
			 r->status == 429 && r->retry_after ?
			 errhint("Stripe asks to retry after %s seconds.", r->retry_after) : 0));
}

/* Should this failed response be tried again? */
static bool
should_retry(SbHttpResponse *r)
{
	if (r->should_retry)
		return strcmp(r->should_retry, "true") == 0;
	return r->status == 0 || r->status == 429 || r->status >= 500;
}

/*
 * Sleeps before retry number attempt: at least Retry-After when Stripe sends
 * it, else an exponential backoff with jitter; interrupts end the wait.
 */
static void
wait_to_retry(SbHttpResponse *r, int attempt)
{
	long		ms;
	TimestampTz deadline;

	if (r->retry_after && strtol(r->retry_after, NULL, 10) > 0)
		ms = Min(strtol(r->retry_after, NULL, 10) * 1000L, (long) MAX_RETRY_WAIT_MS);
	else
	{
		ms = Min(500L << Min(attempt, 5), (long) MAX_RETRY_WAIT_MS);
		ms = ms / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (ms / 2 + 1));
	}

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		CHECK_FOR_INTERRUPTS();
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* A fresh idempotency key: "sb_" and 32 random hex digits. */
static char *
new_idempotency_key(void)
{
	uint8		bytes[16];
	char	   *key = palloc(3 + 32 + 1);

	if (!pg_strong_random(bytes, sizeof(bytes)))
		ereport(ERROR, (errmsg("could not generate a random idempotency key")));
	memcpy(key, "sb_", 3);
	hex_encode((char *) bytes, sizeof(bytes), key + 3);
	key[35] = '\0';
	return key;
}

/* Checks a request path: "/v1/...", printable, no query string. */
static void
check_path(const char *path)
{
	if (path == NULL || path[0] != '/')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path must start with \"/\", as in \"/v1/customers\"")));
	for (const char *p = path; *p; p++)
		if (*p <= ' ' || *p == '?' || *p == '#' || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" must not contain spaces, control characters, '?' or '#'", path),
					 errhint("Pass query parameters in params.")));
}

/* Calls the Stripe API with jsonb parameters (see sb_stripe_call_form). */
Jsonb *
sb_stripe_call(const char *method, const char *path, Jsonb *params,
			   const char *idempotency_key)
{
	return sb_stripe_call_form(method, path, sb_form_encode(params), idempotency_key);
}

/*
 * Calls the Stripe API with an encoded form and returns the response object;
 * raises Stripe's or the network's error.  Retries
 * (stripe_billing.max_network_retries) what Stripe says may be retried, with
 * the same idempotency key.  A returned object of a mapped kind is applied
 * to the local tables.
 */
Jsonb *
sb_stripe_call_form(const char *method, const char *path, const char *form,
					const char *idempotency_key)
{
	bool		mutating = strcmp(method, "GET") != 0;
	SbHttpResponse *r;
	Jsonb	   *body;
	int			attempt = 0;

	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0 &&
		strcmp(method, "DELETE") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("method must be GET, POST or DELETE, not \"%s\"", method)));
	check_path(path);
	if (mutating && (idempotency_key == NULL || idempotency_key[0] == '\0'))
		idempotency_key = new_idempotency_key();

	for (;;)
	{
		r = sb_http_request(method, path, form, mutating ? idempotency_key : NULL);
		body = NULL;
		/* (parsed once; an error body is checked first, it may be anything) */
		if (r->status != 0 && (r->status / 100 == 2 || is_json(r->body, r->body_len)))
			body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(r->body)));
		if (r->status / 100 == 2)
			break;
		if (attempt >= sb_max_network_retries || !should_retry(r))
			report_failure(method, path, r, body);
		wait_to_retry(r, attempt++);
	}

	/* whatever Stripe returned, the caller's next query sees it */
	if (JB_ROOT_IS_OBJECT(body))
	{
		char	   *kind = sb_object_string(body, "object");

		if (kind && sb_object_kind_is_known(kind))
		{
			time_t		snapshot = r->date ? curl_getdate(r->date, NULL) : -1;

			sb_apply_api_object(body, snapshot < 0 ? (pg_time_t) time(NULL) : (pg_time_t) snapshot,
								r->request_id);
		}
	}
	return body;
}

/*
 * stripe_api(method text, path text, params jsonb, idempotency_key text)
 *   -> jsonb
 */
Datum
stripe_api(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("method must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("path must not be NULL")));

	PG_RETURN_JSONB_P(sb_stripe_call(text_to_cstring(PG_GETARG_TEXT_PP(0)),
									 text_to_cstring(PG_GETARG_TEXT_PP(1)),
									 PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
									 PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3))));
}

/*
 * The cursor of the page after a page of events: its newest event's id, if
 * Stripe says more are waiting (has_more); else NULL.
 */
static char *
newer_page_cursor(Jsonb *page)
{
	JsonbValue	buf;
	JsonbValue *v;
	JsonbValue *newest;

	if (!JB_ROOT_IS_OBJECT(page))
		return NULL;
	v = getKeyJsonValueFromContainer(&page->root, "has_more", 8, &buf);
	if (v == NULL || v->type != jbvBool || !v->val.boolean)
		return NULL;
	v = getKeyJsonValueFromContainer(&page->root, "data", 4, &buf);
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data) ||
		JsonContainerSize(v->val.binary.data) == 0)
		return NULL;
	newest = getIthJsonbValueFromContainer(v->val.binary.data, 0);
	if (newest->type != jbvBinary || !JsonContainerIsObject(newest->val.binary.data))
		return NULL;
	return sb_object_string(JsonbValueToJsonb(newest), "id");
}

/*
 * stripe_billing._events_page(cursor text, prefetch_next boolean) -> jsonb
 *
 * GET /v1/events?limit=100&ending_before=cursor: the page of events just
 * newer than the cursor (newest first).  Answered by the request the
 * previous call started in the background when that was this very request
 * and it succeeded; otherwise (or on any failure) asked the usual way, with
 * its retries and errors.  With prefetch_next, and more pages waiting, the
 * request for the next page starts in the background before returning, so
 * it travels while the caller applies this page.  (If the caller's
 * transaction rolls back, its cursor does not move and the next call asks
 * for another page: the prefetched one is dropped.)
 */
Datum
stripe_events_page(PG_FUNCTION_ARGS)
{
	char	   *cursor = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		prefetch_next = PG_GETARG_BOOL(1);
	StringInfoData query;
	SbHttpResponse *r;
	Jsonb	   *page;
	char	   *next;

	initStringInfo(&query);
	sb_form_append(&query, "limit", "100");
	sb_form_append(&query, "ending_before", cursor);

	/* (a 2xx body that is not JSON raises, as it would asked the usual way) */
	r = sb_http_take_prefetched("/v1/events", query.data);
	if (r && r->status / 100 == 2)
		page = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(r->body)));
	else
		page = sb_stripe_call_form("GET", "/v1/events", query.data, NULL);

	if (prefetch_next && (next = newer_page_cursor(page)) != NULL)
	{
		resetStringInfo(&query);
		sb_form_append(&query, "limit", "100");
		sb_form_append(&query, "ending_before", next);
		sb_http_prefetch("/v1/events", query.data);
	}
	PG_RETURN_JSONB_P(page);
}
