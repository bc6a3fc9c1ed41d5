/*-------------------------------------------------------------------------
 *
 * rate.c
 *	  Spacing a session's requests under stripe_billing.max_requests_per_second.
 *
 * Stripe's rate limit is shared by everything using the key, so what runs
 * unattended keeps to a budget: a backfill's or a reconciliation's list
 * requests, in any session, and every request of the background worker
 * (its polls of the platform and of each connected account, their
 * lookbacks, usage, re-fetches), but for the next pages of a backlog of
 * the platform's events, fetched in the background while a page is
 * applied: those are counted, not delayed, so a catch-up is as fast as
 * Stripe answers.  Requests are spaced a hundredth over 1/max_requests_per_
 * second apart, so that no second holds more than the limit, whatever the
 * clocks' jitter.  Stripe's 429 answers are honoured besides (api.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "stripe_billing.h"

/* Whether every request of this session is spaced (the worker's). */
bool		sb_rate_every_request = false;

/* When this session's last counted request was sent. */
static TimestampTz last_request = 0;

/* How long until a request is due (us). */
static long
rate_wait_us(void)
{
	long		spacing = USECS_PER_SEC / sb_max_requests_per_second;
	TimestampTz due = last_request + spacing + spacing / 100;

	return Max((long) (due - GetCurrentTimestamp()), 0L);
}

/* Whether a request may go now. */
bool
sb_rate_due(void)
{
	return rate_wait_us() == 0;
}

/* Counts a request sent now, without waiting. */
void
sb_rate_count(void)
{
	last_request = GetCurrentTimestamp();
}

/* Waits until a request is due, and counts it as sent. */
void
sb_rate_wait(void)
{
	long		left;

	while ((left = rate_wait_us()) > 0)
	{
		CHECK_FOR_INTERRUPTS();
		if (left < 1000)
			pg_usleep(left);	/* (the latch waits whole milliseconds) */
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 left / 1000, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
	CHECK_FOR_INTERRUPTS();
	sb_rate_count();
}
