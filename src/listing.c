/*-------------------------------------------------------------------------
 *
 * listing.c
 *	  Listing Stripe's objects for the backfill and reconciliation, and
 *	  applying what is listed as snapshots.
 *
 * A list page is a snapshot of its objects at the response's time (Stripe's
 * Date header): applied at that time through the same mapping and ordering
 * rules as events, a newer event still wins and an older one is stale.
 * List requests of a session are spaced to stay under
 * stripe_billing.max_requests_per_second (rate.c); Stripe's 429 answers are
 * retried after Retry-After besides, as for every call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_list_page);
PG_FUNCTION_INFO_V1(stripe_list_prefetch);
PG_FUNCTION_INFO_V1(stripe_apply_snapshots);

/*
 * Starts account's GET path?params in the background (account NULL: the
 * platform's), unless the rate says wait.
 */
static void
prefetch_under_rate(const char *path, Jsonb *params, const char *account)
{
	if (!sb_rate_due())
		return;
	sb_http_prefetch(path, sb_form_encode(params), account);	/* (counted) */
}


/*
 * The parameters of the page after page, asked for with params: params
 * with starting_after = the page's last object, when Stripe says more are
 * waiting; else NULL.
 */
static Jsonb *
next_page_params(Jsonb *params, Jsonb *page)
{
	char	   *last_id = sb_list_page_edge_id(page, false);
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	key;
	JsonbValue	val;
	bool		skip = false;

	if (last_id == NULL || (params && !JB_ROOT_IS_OBJECT(params)))
		return NULL;

	/* params without starting_after, then starting_after = the last id */
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (params)
	{
		it = JsonbIteratorInit(&params->root);
		while ((tok = JsonbIteratorNext(&it, &val, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				skip = val.val.string.len == 14 && memcmp(val.val.string.val, "starting_after", 14) == 0;
				if (!skip)
					pushJsonbValue(&state, WJB_KEY, &val);
			}
			else if (tok == WJB_VALUE && !skip)
				pushJsonbValue(&state, WJB_VALUE, &val);
		}
	}
	key.type = jbvString;
	key.val.string.val = "starting_after";
	key.val.string.len = 14;
	pushJsonbValue(&state, WJB_KEY, &key);
	val.type = jbvString;
	val.val.string.val = last_id;
	val.val.string.len = strlen(last_id);
	pushJsonbValue(&state, WJB_VALUE, &val);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * stripe_billing._list_page(path text, params jsonb, next_params jsonb,
 *                           account text,
 *                           OUT page jsonb, OUT snapshot timestamptz)
 *
 * One GET of a list endpoint, as account's (NULL: the platform's own),
 * throttled; the page is not applied.  The request after it starts in the
 * background before returning, so it travels while the caller applies this
 * page: next_params for the same path and account, or when NULL the next
 * page (starting_after), when Stripe says more wait.  JSON null: none.
 * (Not when that would have to wait for the rate: the next call then asks
 * the usual way.)  (Before 0.4.0's ALTER EXTENSION UPDATE, without account.)
 */
Datum
stripe_list_page(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 3);
	char	   *path = sb_text_arg(fcinfo, 0, "path");
	Jsonb	   *params = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	Jsonb	   *next = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	char	   *query = sb_form_encode(params);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	pg_time_t	at;
	Jsonb	   *page;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	/* (a request started in the background was counted; the worker's wait in sb_http_request) */
	if (!sb_http_prefetched_is(path, query, account) && !sb_rate_every_request)
		sb_rate_wait();
	page = sb_stripe_get(path, query, account, &at);

	if (next == NULL)
		next = next_page_params(params, page);
	else if (!JB_ROOT_IS_OBJECT(next))
		next = NULL;
	if (next != NULL)
		prefetch_under_rate(path, next, account);

	values[0] = JsonbPGetDatum(page);
	values[1] = TimestampTzGetDatum(time_t_to_timestamptz(at));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * stripe_billing._list_prefetch(path text, params jsonb, account text) -> void
 *
 * Starts the request a later _list_page will make (of the same account), so
 * it travels while the caller works (see _list_page).  (Before 0.4.0's
 * ALTER EXTENSION UPDATE, STRICT and without account.)
 */
Datum
stripe_list_prefetch(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, 2);
	char	   *path = sb_text_arg(fcinfo, 0, "path");

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("params must not be NULL")));
	prefetch_under_rate(path, PG_GETARG_JSONB_P(1), account);
	PG_RETURN_VOID();
}

/*
 * stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz,
 *                                 source text, replacements jsonb,
 *                                 derive boolean) -> jsonb
 *
 * See sb_apply_snapshots (events.c).
 */
Datum
stripe_apply_snapshots(PG_FUNCTION_ARGS)
{
	char	   *source;
	char	   *account = sb_account_arg(fcinfo, 5);

	/* (not STRICT, for replacements: NULL objects, time or source map nothing) */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	source = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (strspn(source, "abcdefghijklmnopqrstuvwxyz_") != strlen(source) || source[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("source must be lower-case letters and underscores, not \"%s\"", source)));
	PG_RETURN_JSONB_P(sb_apply_snapshots(PG_GETARG_JSONB_P(0), PG_GETARG_TIMESTAMPTZ(1), source,
										 PG_NARGS() <= 3 || PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3),
										 PG_NARGS() <= 4 || PG_ARGISNULL(4) || PG_GETARG_BOOL(4),
										 account));
}
