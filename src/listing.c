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
 * stripe_billing.max_requests_per_second (Stripe's own limit is shared by
 * everything using the key); Stripe's 429 answers are retried after
 * Retry-After besides, as for every call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_list_page);
PG_FUNCTION_INFO_V1(stripe_apply_snapshots);

/* When this session's last list request was sent. */
static TimestampTz last_list_request = 0;

/* Waits until a list request is due under max_requests_per_second. */
static void
throttle(void)
{
	TimestampTz due = last_list_request + USECS_PER_SEC / sb_max_requests_per_second;

	for (;;)
	{
		long		left;

		CHECK_FOR_INTERRUPTS();
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due);
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	last_list_request = GetCurrentTimestamp();
}

/*
 * stripe_billing._list_page(path text, params jsonb, OUT page jsonb,
 *                           OUT snapshot timestamptz)
 *
 * One GET of a list endpoint, throttled; the page is not applied.
 */
Datum
stripe_list_page(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *params = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	pg_time_t	at;
	Jsonb	   *page;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	throttle();
	page = sb_stripe_get(path, sb_form_encode(params), &at);
	values[0] = JsonbPGetDatum(page);
	values[1] = TimestampTzGetDatum(time_t_to_timestamptz(at));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz,
 *                                 source text) -> jsonb
 *
 * See sb_apply_snapshots (events.c).
 */
Datum
stripe_apply_snapshots(PG_FUNCTION_ARGS)
{
	char	   *source = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (strspn(source, "abcdefghijklmnopqrstuvwxyz_") != strlen(source) || source[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("source must be lower-case letters and underscores, not \"%s\"", source)));
	PG_RETURN_JSONB_P(sb_apply_snapshots(PG_GETARG_JSONB_P(0), PG_GETARG_TIMESTAMPTZ(1), source));
}
