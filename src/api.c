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
 * Stripe's message, and type/code/param in the detail, secrets scrubbed
 * (an upstream may echo the Authorization header, and PL/pgSQL callers
 * store SQLERRM).  Paths, idempotency keys and accounts are checked before
 * any request: they go into the request line and headers as they are.
 *
 * Every call is made as one account's: the platform's own (account NULL),
 * or a connected account's (Stripe Connect), which goes in the
 * Stripe-Account header, and whose id the objects returned are applied
 * with.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

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
#include "kinds.h"

PG_FUNCTION_INFO_V1(stripe_api);
PG_FUNCTION_INFO_V1(stripe_events_page);
PG_FUNCTION_INFO_V1(stripe_events_page_text);
PG_FUNCTION_INFO_V1(stripe_events_text);

/* Retries of a list request (sb_stripe_get), at least. */
#define LIST_RETRIES 5

/* Longest wait between retries, whatever Retry-After says (ms). */
#define MAX_RETRY_WAIT_MS 10000

/*
 * A response body as jsonb, or NULL if it is not JSON (a proxy's HTML page,
 * a body cut short, bytes invalid in the database encoding or a NUL, which
 * would end the text early).  Parsed once: jsonb_in's data error is caught
 * and forgotten rather than raised.  Other errors (out of memory, an
 * interrupt) are raised as they are.
 */
Jsonb *
sb_parse_body(SbHttpResponse *r)
{
	MemoryContext context = CurrentMemoryContext;
	Jsonb	   *volatile body = NULL;

	if (!pg_verify_mbstr(GetDatabaseEncoding(), r->body, r->body_len, true))
		return NULL;
	PG_TRY();
	{
		body = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(r->body)));
	}
	PG_CATCH();
	{
		int			sqlstate;

		MemoryContextSwitchTo(context);
		sqlstate = geterrcode();
		/* syntax, encoding, nesting or size: the body is not usable JSON */
		if (ERRCODE_TO_CATEGORY(sqlstate) != ERRCODE_DATA_EXCEPTION &&
			ERRCODE_TO_CATEGORY(sqlstate) != ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			PG_RE_THROW();
		FlushErrorState();
		body = NULL;
	}
	PG_END_TRY();
	return body;
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

/*
 * Raises the error of a failed response (HTTP error, a body that is not
 * JSON, or no response at all).  What Stripe (or whatever answered) wrote
 * is formatted first and scrubbed of secrets, then raised as it is.
 *
 * The DETAIL of a Stripe error has a stable form, which callers parse to
 * classify the error by Stripe's type and code rather than by its message
 * (stripe_billing._api_error, docs/reference.md): "<method> <path>: HTTP
 * <status>, type <type>, code <code>, param <param>, request <id>.", with
 * "(none)" for what Stripe did not send.
 */
static void
report_api_failure(const char *method, const char *path, SbHttpResponse *r, Jsonb *body)
{
	Jsonb	   *error = error_object(body);
	char	   *type = sb_object_string(error, "type");
	char	   *code = sb_object_string(error, "code");
	char	   *param = sb_object_string(error, "param");
	char	   *message = sb_object_string(error, "message");
	char	   *text;
	char	   *detail;
	char	   *hint = NULL;

	if (r->status == 0)
	{
		text = psprintf("Stripe API request %s %s failed: %s", method, path, r->network_error);
		sb_scrub_secrets(text);
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg_internal("%s", text),
				 r->timed_out ?
				 errhint("stripe_billing.connect_timeout and stripe_billing.request_timeout bound each request.") : 0));
	}
	if (body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API request %s %s returned a response that is not JSON (HTTP %d, %d bytes)",
						method, path, r->status, r->body_len),
				 errhint("The response may have been cut short, or come from a proxy rather than Stripe.")));

	text = psprintf("Stripe API: %s", message ? message : "request failed");
	detail = psprintf("%s %s: HTTP %d, type %s, code %s, param %s, request %s.",
					  method, path, r->status,
					  type ? type : "(none)", code ? code : "(none)",
					  param ? param : "(none)",
					  r->request_id ? r->request_id : "(none)");
	if (r->status == 429 && r->retry_after)
		hint = psprintf("Stripe asks to retry after %s seconds.", r->retry_after);
	sb_scrub_secrets(text);
	sb_scrub_secrets(detail);
	sb_scrub_secrets(hint);
	ereport(ERROR,
			(errcode(error_sqlstate(r->status, type)),
			 errmsg_internal("%s", text),
			 errdetail_internal("%s", detail),
			 hint ? errhint("%s", hint) : 0));
}

/*
 * Should this failed response be tried again?  A 2xx whose body is not JSON
 * (body == NULL) is taken for what it most likely is, a transfer spoiled on
 * the way (a proxy's page, a body cut short), and retried like a network
 * failure: for a mutating call the retry carries the same idempotency key,
 * so Stripe replays the first result rather than acting twice.
 */
static bool
should_retry(SbHttpResponse *r, Jsonb *body)
{
	if (r->should_retry)
		return strcmp(r->should_retry, "true") == 0;
	return r->status == 0 || r->status == 429 || r->status >= 500 ||
		(r->status / 100 == 2 && body == NULL);
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

/* Is c an unreserved URI character (RFC 3986): A-Z a-z 0-9 - . _ ~ ? */
static bool
is_unreserved(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~';
}

/*
 * Checks a request path, which goes into the request line as it is:
 * "/" then segments of unreserved characters and %XX escapes, separated by
 * single slashes, none empty and none "." or ".." (also percent-encoded:
 * "%2e%2E"), which libcurl or the server would resolve, so that
 * "/v1/subscriptions/../customers/x" reached another endpoint.  The
 * characters are checked first, so the later messages can quote the path.
 */
void
sb_check_request_path(const char *path)
{
	const char *p;

	if (path == NULL || path[0] != '/')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path must start with \"/\", as in \"/v1/customers\"")));
	/* (not quoted: a space or control character would show raw) */
	for (p = path; *p; p++)
		if ((unsigned char) *p <= 0x20 || (unsigned char) *p >= 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path must not contain spaces, control characters or non-ASCII bytes, but byte %d is 0x%02X",
							(int) (p - path) + 1, (unsigned char) *p),
					 errhint("Percent-encode other characters of an id.")));
	for (p = path; *p; p++)
	{
		if (*p == '?' || *p == '#')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" must not contain '?' or '#'", path),
					 errhint("Pass query parameters in params.")));
		if (*p == '%' && !(isxdigit((unsigned char) p[1]) && isxdigit((unsigned char) p[2])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" has a '%%' not followed by two hexadecimal digits", path)));
		if (*p != '/' && *p != '%' && !is_unreserved(*p))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" must contain only letters, digits, \"-._~\", \"/\" and %%XX escapes, not '%c'",
							path, *p),
					 errhint("Percent-encode other characters of an id.")));
	}

	/* each segment, after a "/" */
	for (p = path + 1;; p++)
	{
		int			chars = 0;
		int			dots = 0;

		for (; *p && *p != '/'; p++, chars++)
		{
			if (*p == '.')
				dots++;
			else if (p[0] == '%' && p[1] == '2' && (p[2] == 'e' || p[2] == 'E'))
			{
				dots++;
				p += 2;
			}
			else if (*p == '%')
				p += 2;
		}
		if (chars == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" has an empty segment", path),
					 errdetail("A path must not end in \"/\" nor contain \"//\".")));
		if (dots == chars && chars <= 2)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("path \"%s\" has a \".\" or \"..\" segment", path),
					 errdetail("Dot segments, also percent-encoded, would be resolved to another path.")));
		if (*p == '\0')
			break;
	}
}

/*
 * Checks an idempotency key, which goes into a request header as it is:
 * 1 to 255 printable ASCII characters (a CR or LF would end the header and
 * start another, or a whole second request).  The key is not quoted in
 * the message: it may hold the very control characters refused.
 */
static void
check_idempotency_key(const char *key)
{
	size_t		len = strlen(key);

	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) key[i];

		if (c < 0x20 || c > 0x7e)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency_key must be printable ASCII, but byte %zu is 0x%02X", i + 1, c),
					 errdetail("An idempotency key is 1 to 255 characters from space to \"~\" (0x20 to 0x7E).")));
	}
	if (len > 255)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency_key must be at most 255 characters, not %zu", len)));
}

/*
 * Raises invalid_parameter_value naming the argument unless account is a
 * connected account's id ("acct_" and letters or digits, see
 * sb_is_account_id): it goes into the Stripe-Account header as it is.  The
 * value is quoted as stripe_billing._check_account quotes it: cut at 100
 * characters, each one that is not printable ASCII shown as '?' (it may be
 * the very CR or LF refused).
 */
void
sb_check_account(const char *argument, const char *account)
{
	StringInfoData shown;
	const char *p = account;

	if (sb_is_account_id(account))
		return;
	initStringInfo(&shown);
	appendStringInfoChar(&shown, '\'');
	for (int chars = 0; *p && chars < 100; chars++)
	{
		unsigned char c = (unsigned char) *p;

		if (c >= 0x20 && c < 0x7f)
		{
			if (c == '\'')
				appendStringInfoChar(&shown, '\'');
			appendStringInfoChar(&shown, *p++);
		}
		else
		{
			appendStringInfoChar(&shown, '?');
			p += strnlen(p, pg_mblen(p));
		}
	}
	appendStringInfoChar(&shown, '\'');
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be a connected account's id (acct_ and letters or digits), not %s",
					argument, shown.data)));
}

/*
 * Is this a Stripe-Context value (a thin event's context): 1 to 255 bytes
 * of segments of letters, digits and '_', separated by single '/'
 * ("acct_1Abc", "acct_1Abc/acct_1Def")?  It goes into the Stripe-Context
 * header as it is.
 */
bool
sb_is_context(const char *s)
{
	size_t		len = strlen(s);
	bool		segment_start = true;

	if (len == 0 || len > 255)
		return false;
	for (; *s; s++)
	{
		if (*s == '/')
		{
			if (segment_start)
				return false;	/* an empty segment */
			segment_start = true;
			continue;
		}
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
			  *s == '_'))
			return false;
		segment_start = false;
	}
	return !segment_start;
}

/*
 * The connected account a context names (its last segment, when that is
 * an account id), palloc'd; NULL when it names none.
 */
char *
sb_context_account(const char *context)
{
	const char *last = strrchr(context, '/');

	last = last ? last + 1 : context;
	return sb_is_account_id(last) ? pstrdup(last) : NULL;
}

/*
 * Raises invalid_parameter_value naming the argument unless context is a
 * Stripe-Context value (sb_is_context).  Quoted as sb_check_account quotes.
 */
void
sb_check_context(const char *argument, const char *context)
{
	StringInfoData shown;

	if (sb_is_context(context))
		return;
	initStringInfo(&shown);
	for (const char *p = context; *p && shown.len < 100; p++)
		appendStringInfoChar(&shown, (*p >= 0x20 && *p < 0x7f) ? *p : '?');
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be a Stripe context (letters, digits and \"_\", segments separated by \"/\"), not \"%s\"",
					argument, shown.data)));
}

/*
 * The account argument argno of a SQL function: NULL when the function's
 * SQL declaration has no such argument (an older version's, before ALTER
 * EXTENSION UPDATE) or it is NULL (the platform's own account); else
 * checked (sb_check_account) before any request.
 */
char *
sb_account_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *account;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	account = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	sb_check_account("account", account);
	return account;
}

/* Calls the Stripe API with jsonb parameters (see sb_stripe_call_form). */
Jsonb *
sb_stripe_call(const char *method, const char *path, Jsonb *params,
			   const char *idempotency_key, const char *account)
{
	return sb_stripe_call_form(method, path, sb_form_encode(params), idempotency_key, account);
}

/*
 * Sends a request until it gets a JSON 2xx answer, which it returns (and the
 * response in *response); raises Stripe's or the network's error.  Retries
 * (up to max_retries times) what Stripe says may be retried, and
 * network failures (a 2xx that is not JSON counted as one), with the same
 * idempotency key.
 */
static Jsonb *
call_with_retries(const char *method, const char *path, const char *form,
				  const char *idempotency_key, const char *account, int max_retries,
				  SbHttpResponse **response)
{
	SbHttpResponse *r;
	Jsonb	   *body;
	int			attempt = 0;

	for (;;)
	{
		r = sb_http_request(method, path, form, idempotency_key, account);
		/* (parsed once, whatever the status: an error body may be anything) */
		body = r->status != 0 ? sb_parse_body(r) : NULL;
		if (r->status / 100 == 2 && body != NULL)
			break;
		if (attempt >= max_retries || !should_retry(r, body))
			report_api_failure(method, path, r, body);
		wait_to_retry(r, attempt++);
	}
	*response = r;
	return body;
}

/* The time of a response: its Date header, else now. */
pg_time_t
sb_response_time(SbHttpResponse *r)
{
	time_t		t = r->date ? curl_getdate(r->date, NULL) : -1;

	return t < 0 ? (pg_time_t) time(NULL) : (pg_time_t) t;
}

/* Does path ask for a preview (an invoice that is not made)? */
static bool
is_preview(const char *path)
{
	size_t		len = strlen(path);

	return len >= 15 && strcmp(path + len - 15, "/create_preview") == 0;
}

/*
 * Calls the Stripe API with an encoded form, as account's (NULL: the
 * platform's own), and returns the response object; raises Stripe's or the
 * network's error (see call_with_retries).  An empty idempotency_key, like
 * NULL, means a fresh one.  A returned object of a mapped kind is applied
 * to the local tables, as account's (unless it is a preview).
 */
Jsonb *
sb_stripe_call_form(const char *method, const char *path, const char *form,
					const char *idempotency_key, const char *account)
{
	bool		mutating = strcmp(method, "GET") != 0;
	SbHttpResponse *r;
	Jsonb	   *body;

	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0 &&
		strcmp(method, "DELETE") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("method must be GET, POST or DELETE, not \"%s\"", method)));
	sb_check_request_path(path);
	if (idempotency_key && idempotency_key[0] != '\0')
		check_idempotency_key(idempotency_key);
	else if (mutating)
		idempotency_key = new_idempotency_key();
	if (account)
		sb_check_account("account", account);

	body = call_with_retries(method, path, form, mutating ? idempotency_key : NULL, account,
							 sb_max_network_retries, &r);

	/*
	 * whatever Stripe returned, the caller's next query sees it; but not a
	 * preview (.../create_preview): it is no object of the account
	 */
	if (JB_ROOT_IS_OBJECT(body) && !is_preview(path))
	{
		char	   *kind = sb_object_string(body, "object");

		if (kind && sb_object_kind(kind) != NULL)
			sb_apply_api_object(body, sb_response_time(r), r->request_id, account);
	}
	return body;
}

/*
 * GET with an encoded query, for lists, as account's (NULL: the platform's
 * own): returns the response object (not applied) and the response's time (Stripe's Date header) in
 * *response_time_out, the moment the list is a snapshot of.  Answered by the
 * request started in the background (sb_http_prefetch) when that was this
 * very request and it succeeded; otherwise asked the usual way.  A long listing
 * is bound to meet Stripe's rate limit now and then: it is retried at least
 * LIST_RETRIES times (after Retry-After), so a 429 is waited out instead of
 * failing the backfill.
 */
Jsonb *
sb_stripe_get(const char *path, const char *query, const char *account,
			  pg_time_t *response_time_out)
{
	SbHttpResponse *r;
	Jsonb	   *body;

	sb_check_request_path(path);
	if (account)
		sb_check_account("account", account);
	/* the answer to a request started in the background, if it is this one and it succeeded */
	r = sb_http_take_prefetched(path, query, account);
	body = (r && r->status / 100 == 2) ? sb_parse_body(r) : NULL;
	if (body == NULL)
		body = call_with_retries("GET", path, query, NULL, account,
								 Max(sb_max_network_retries, LIST_RETRIES), &r);
	*response_time_out = sb_response_time(r);
	return body;
}

/*
 * stripe_api(method text, path text, params jsonb, idempotency_key text,
 *            account text) -> jsonb
 *
 * (Before 0.4.0's ALTER EXTENSION UPDATE, without account.)
 */
Datum
stripe_api(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 4);

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("method must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("path must not be NULL")));

	PG_RETURN_JSONB_P(sb_stripe_call(text_to_cstring(PG_GETARG_TEXT_PP(0)),
									 text_to_cstring(PG_GETARG_TEXT_PP(1)),
									 PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
									 PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)),
									 account));
}

/*
 * The id of the first (first = true) or last object of a list page, when
 * Stripe says more are waiting (has_more); else NULL.  The cursor of the
 * page after it: a page of events is newest first, so ending_before its
 * first; starting_after the last for any list.
 */
char *
sb_list_page_edge_id(Jsonb *page, bool first)
{
	JsonbValue	buf;
	JsonbValue *v;
	JsonbValue *edge;
	int			n;

	if (!JB_ROOT_IS_OBJECT(page))
		return NULL;
	v = getKeyJsonValueFromContainer(&page->root, "has_more", 8, &buf);
	if (v == NULL || v->type != jbvBool || !v->val.boolean)
		return NULL;
	v = getKeyJsonValueFromContainer(&page->root, "data", 4, &buf);
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data) ||
		(n = JsonContainerSize(v->val.binary.data)) == 0)
		return NULL;
	edge = getIthJsonbValueFromContainer(v->val.binary.data, first ? 0 : n - 1);
	if (edge->type != jbvBinary || !JsonContainerIsObject(edge->val.binary.data))
		return NULL;
	return sb_object_string(JsonbValueToJsonb(edge), "id");
}

/* A text argument that must not be NULL (of a function that is not STRICT). */
char *
sb_text_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * stripe_billing._events_page(event_cursor text, prefetch_next boolean,
 *                             account text) -> jsonb
 *
 * GET /v1/events?limit=100&ending_before=cursor, as account's (NULL: the
 * platform's own): the page of events just newer than the cursor (newest
 * first).  Answered by the request the previous call started in the
 * background when that was this very request (of this account) and it
 * succeeded; otherwise (or on any failure) asked the usual way, with its
 * retries and errors.  With prefetch_next, and more pages waiting, the
 * request for the next page starts in the background before returning, so
 * it travels while the caller applies this page.  (If the caller's
 * transaction rolls back, its cursor does not move and the next call asks
 * for the same page again: it takes the prefetched one only while that is
 * recent, see sb_http_prefetch.)  (Before 0.4.0's ALTER EXTENSION UPDATE,
 * STRICT and without account.)
 */
Datum
stripe_events_page(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 2);
	char	   *cursor = sb_text_arg(fcinfo, 0, "event_cursor");
	bool		prefetch_next = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	StringInfoData query;
	SbHttpResponse *r;
	Jsonb	   *page;
	char	   *next;

	initStringInfo(&query);
	sb_form_append(&query, "limit", "100");
	sb_form_append(&query, "ending_before", cursor);

	/* (anything but a JSON 2xx is asked again the usual way, which says why) */
	r = sb_http_take_prefetched("/v1/events", query.data, account);
	page = (r && r->status / 100 == 2) ? sb_parse_body(r) : NULL;
	if (page == NULL)
		page = sb_stripe_call_form("GET", "/v1/events", query.data, NULL, account);

	if (prefetch_next && (next = sb_list_page_edge_id(page, true)) != NULL)
	{
		resetStringInfo(&query);
		sb_form_append(&query, "limit", "100");
		sb_form_append(&query, "ending_before", next);
		sb_http_prefetch("/v1/events", query.data, account);
	}
	PG_RETURN_JSONB_P(page);
}

/*
 * GET /v1/events?<query>, as account's (NULL: the platform's own), as the
 * text Stripe sent, for a page jsonb refuses as a whole (one event holding
 * a \u0000, say): the caller splits it with _split_list_page, which keeps
 * such text as it is, and keeps the event jsonb refuses as failed.  A body
 * that is not text in the database encoding raises SBA07, as before.
 */
static text *
events_text(const char *query, const char *account)
{
	SbHttpResponse *r;
	int			attempt = 0;

	for (;;)
	{
		r = sb_http_request("GET", "/v1/events", query, NULL, account);
		if (r->status / 100 == 2)
			break;
		if (attempt >= sb_max_network_retries || !should_retry(r, r->status ? sb_parse_body(r) : NULL))
			report_api_failure("GET", "/v1/events", r, r->status ? sb_parse_body(r) : NULL);
		wait_to_retry(r, attempt++);
	}
	if (memchr(r->body, '\0', r->body_len) != NULL ||
		!pg_verify_mbstr(PG_UTF8, r->body, r->body_len, true))
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API request GET /v1/events returned a body that is not UTF-8 text (%d bytes)",
						r->body_len)));
	/* (raises when a character has no equivalent in the database encoding) */
	return cstring_to_text(pg_any_to_server(r->body, r->body_len, PG_UTF8));
}

/*
 * stripe_billing._events_page_text(event_cursor text, account text) -> text
 *
 * The same page as _events_page, as the text Stripe sent (see events_text).
 * (Before 0.4.0's ALTER EXTENSION UPDATE, STRICT and without account.)
 */
Datum
stripe_events_page_text(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 1);
	StringInfoData query;

	initStringInfo(&query);
	sb_form_append(&query, "limit", "100");
	sb_form_append(&query, "ending_before", sb_text_arg(fcinfo, 0, "event_cursor"));
	PG_RETURN_TEXT_P(events_text(query.data, account));
}

/*
 * stripe_billing._events_text(params jsonb, account text) -> text
 *
 * GET /v1/events with these parameters (the lookback's), as account's, as
 * the text Stripe sent (see events_text).
 */
Datum
stripe_events_text(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 1);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("params must not be NULL")));
	PG_RETURN_TEXT_P(events_text(sb_form_encode(PG_GETARG_JSONB_P(0)), account));
}
