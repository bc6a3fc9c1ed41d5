/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background worker that pulls Stripe's events.
 *
 * Registered from _PG_init when the library is in shared_preload_libraries;
 * runs in the database named by stripe_billing.database (restarting when a
 * reload changes it) once recovery has
 * finished (so never on a standby), and the postmaster restarts it after a
 * crash.  Each cycle it applies pages of /v1/events newer than its cursor,
 * oldest first, one transaction per page: the page's events and the new
 * cursor commit together (stripe_billing._poll_page), so a crash at any
 * instant neither loses nor double-applies an event.  On its first start it
 * also backfills the account's objects (a few pages a cycle, so events keep
 * flowing), and every stripe_billing.reconcile_interval it reconciles them.
 * Then it re-reads the lookback window (and, with stripe_billing.thin_events,
 * lists GET /v2/core/events), polls the connected accounts due
 * (Connect: see account_polls_per_cycle), flushes the usage outbox, retries
 * failed events and re-fetches rows marked by ties, each step a transaction
 * of its own (see locks.c: a transaction applies one unit).
 * Thin events (event destinations) are fetched first in each cycle, and
 * between cycles as soon as a backend commits one: it sets the worker's
 * latch (thin.c).
 * Between cycles it sleeps on its latch: SIGTERM ends it promptly, SIGHUP
 * reloads the settings.  Failures back off exponentially, with jitter.
 *
 * It connects as stripe_billing.worker_role (the bootstrap superuser when
 * empty), forces search_path = pg_catalog, pg_temp for its session (so no
 * role's object planted on the database's path ever runs in it), and does
 * everything through stripe_billing._worker_step, a SECURITY DEFINER
 * function with a pinned search_path, which runs as the extension's owner:
 * the role needs EXECUTE on it only.  That function is found by OID as a
 * member of the installed extension and called through fmgr (see
 * extension.c): before CREATE EXTENSION, or after DROP EXTENSION, a schema
 * stripe_billing planted by the database's owner is never looked into.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "stripe_billing.h"

PGDLLEXPORT void stripe_billing_worker_main(Datum arg);

/* Longest backoff after failures, and after an authentication failure. */
#define MAX_BACKOFF_MS		(5 * 60 * 1000)
#define AUTH_BACKOFF_MS		(10 * 60 * 1000)
/* Pages applied in a row before the other duties get a turn. */
#define PAGES_PER_CYCLE		50

/* Objects marked by ties re-fetched a cycle, one a transaction. */
#define REFETCHES_PER_CYCLE 20

/*
 * Thin events fetched a cycle (or when woken between cycles), one a
 * transaction: two requests each, spaced by max_requests_per_second.
 */
#define THIN_FETCHES_PER_CYCLE 100

/* Pages of GET /v2/core/events a cycle (stripe_billing.thin_events), 10 each. */
#define THIN_POLLS_PER_CYCLE 5

/* Pages of a backfill or reconciliation a cycle (an entitlements page is 20 requests). */
#define LISTING_PAGES_PER_CYCLE 5

/*
 * Connected accounts polled a cycle: half a poll interval's worth of
 * requests under max_requests_per_second (their requests are spaced by
 * it), so that a cycle lasts at most about one and a half poll intervals
 * and the platform's events keep their pace; the accounts left wait for
 * the next cycle, the longest waiting first.
 */
static int
account_polls_per_cycle(void)
{
	double		budget = (double) sb_max_requests_per_second * sb_poll_interval / 2000.0;

	return (int) Max(1.0, Min(budget, 100000.0));
}

/* What a step of a cycle found. */
typedef enum StepResult
{
	STEP_DONE,					/* nothing (more) to do */
	STEP_MORE,					/* more pages wait */
	STEP_NOT_READY,				/* extension missing, no key, paused */
	STEP_FAILED
} StepResult;

/* Registers the worker (called from _PG_init under shared_preload_libraries). */
void
sb_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "stripe_billing");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "stripe_billing_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "stripe_billing sync");
	snprintf(worker.bgw_type, BGW_MAXLEN, "stripe_billing sync");
	RegisterBackgroundWorker(&worker);
}

/*
 * The installed extension's stripe_billing._worker_step(text, text), found
 * by its membership (see extension.c), or InvalidOid while the extension is
 * not installed here: a function of that name the database's owner may
 * have made is never called.
 *
 * First, before any table is touched, the step's transaction takes the
 * extension itself in share mode.  DROP EXTENSION locks the extension
 * before its tables, so it waits for the step under way, and a step never
 * holds one table while DROP EXTENSION holds the next (a deadlock, which
 * cancelled the DROP).  The extension is looked up again once locked: a
 * DROP that committed meanwhile leaves nothing to call.
 */
static Oid
worker_step_function(void)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Oid			extension = sb_extension_oid();

	if (!OidIsValid(extension))
		return InvalidOid;
	LockDatabaseObject(ExtensionRelationId, extension, 0, AccessShareLock);
	if (sb_extension_oid() != extension)
		return InvalidOid;
	return sb_extension_function("_worker_step", 2, argtypes, true);
}

/*
 * Runs the extension's _worker_step(step, error) and returns its answer.
 * Called by OID (no SQL is parsed in the worker's session); the worker's
 * role needs EXECUTE on it, as a SQL call would.
 */
static bool
worker_step(Oid fn, const char *step, const char *error)
{
	LOCAL_FCINFO(fcinfo, 2);
	FmgrInfo	flinfo;
	Datum		result;

	if (sb_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function stripe_billing._worker_step"),
				 errhint("GRANT EXECUTE ON FUNCTION stripe_billing._worker_step(text, text) TO the role of stripe_billing.worker_role.")));
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(step);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = error ? CStringGetTextDatum(error) : (Datum) 0;
	fcinfo->args[1].isnull = error == NULL;
	result = FunctionCallInvoke(fcinfo);
	return !fcinfo->isnull && DatumGetBool(result);
}

/* Is the extension installed here, and is the worker asked to work? */
static StepResult
readiness(Oid fn)
{
	if (!OidIsValid(fn))
		return STEP_NOT_READY;	/* wait for CREATE EXTENSION */
	if (!worker_step(fn, "ready", NULL))
		return STEP_NOT_READY;	/* paused */
	if (sb_api_key == NULL || sb_api_key[0] == '\0')
	{
		/* say so where sync_status shows it, then wait for a reload */
		(void) worker_step(fn, "no_key", NULL);
		return STEP_NOT_READY;
	}
	return STEP_DONE;
}

/*
 * Runs one SQL step in its own transaction; returns what it found.  On
 * error, reports it, aborts, and records it in sync_state (new transaction).
 */
static StepResult
run_step(const char *what, const char *step, int *sqlerrcode)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	StepResult	result = STEP_DONE;

	*sqlerrcode = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);

	PG_TRY();
	{
		Oid			fn = worker_step_function();

		result = readiness(fn);
		/*
		 * 0.3.0's SQL, until ALTER EXTENSION UPDATE: its step "duties" does
		 * usage, retries and re-fetches at once
		 */
		if (result == STEP_DONE && step != NULL && strcmp(step, "poll") != 0 &&
			!OidIsValid(sb_extension_function("_refetch_one", 0, NULL, true)))
			step = strcmp(step, "usage") == 0 ? "duties" :
				(strcmp(step, "retry") == 0 || strcmp(step, "refetch") == 0) ? NULL : step;
		/* before 0.4.0's SQL, no connected account is polled */
		if (result == STEP_DONE && step != NULL && strcmp(step, "poll_accounts") == 0 &&
			!OidIsValid(sb_extension_function("_poll_next_account", 0, NULL, true)))
			step = NULL;
		/* ... nor any thin event fetched */
		if (result == STEP_DONE && step != NULL && strncmp(step, "thin", 4) == 0 &&
			!OidIsValid(sb_extension_function("_thin_fetch_one", 0, NULL, true)))
			step = NULL;
		/* a step's answer says whether more is waiting */
		if (result == STEP_DONE && step != NULL)
			result = worker_step(fn, step, NULL) ? STEP_MORE : STEP_DONE;
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		*sqlerrcode = edata->sqlerrcode;

		/* remember the failure where sync_status shows it (no secret in it) */
		sb_scrub_secrets(edata->message);
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		{
			Oid			fn = worker_step_function();

			if (OidIsValid(fn))
				(void) worker_step(fn, "failed", edata->message);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		FreeErrorData(edata);
		result = STEP_FAILED;
	}
	PG_END_TRY();

	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

/* How long to wait after the given number of failures in a row. */
static long
backoff_ms(int failures, int sqlerrcode)
{
	long		ms;

	if (sqlerrcode == ERRCODE_SB_API_AUTHENTICATION)
		return AUTH_BACKOFF_MS;
	ms = Max(sb_poll_interval, 1000L) << Min(failures, 10);
	ms = Min(ms, MAX_BACKOFF_MS);
	/* full jitter over the upper half: workers of many databases spread out */
	return ms / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (ms / 2));
}

/*
 * Runs up to LISTING_PAGES_PER_CYCLE pages of a paged step (backfill, reconcile),
 * each in its own transaction.  Returns STEP_MORE when it or the cycle so
 * far (so_far) left work waiting, STEP_FAILED on failure, else STEP_DONE.
 */
static StepResult
run_pages(const char *what, const char *step, StepResult so_far, int *failures,
		  int *sqlerrcode)
{
	StepResult	result = STEP_DONE;

	for (int page = 0; page < LISTING_PAGES_PER_CYCLE; page++)
	{
		result = run_step(what, step, sqlerrcode);
		CHECK_FOR_INTERRUPTS();
		if (result == STEP_MORE)
			*failures = 0;
		if (result != STEP_MORE)
			break;
	}
	if (result == STEP_FAILED || result == STEP_NOT_READY)
		return result;
	return (result == STEP_MORE || so_far == STEP_MORE) ? STEP_MORE : STEP_DONE;
}

/*
 * Fetches the pending thin events that are due, one a transaction, up to
 * THIN_FETCHES_PER_CYCLE: STEP_MORE when that many were fetched (more may
 * be due), STEP_FAILED when a step failed.
 */
static StepResult
run_thin_fetches(int *sqlerrcode)
{
	StepResult	result = STEP_DONE;

	for (int i = 0; i < THIN_FETCHES_PER_CYCLE; i++)
	{
		result = run_step("stripe_billing: fetching a thin event", "thin", sqlerrcode);
		CHECK_FOR_INTERRUPTS();
		if (result != STEP_MORE)
			return result;
	}
	return STEP_MORE;
}

/*
 * Sleeps wait_ms on the latch, until SIGTERM or a reload; a backend that
 * committed a pending thin event meanwhile wakes it (thin.c), and those are
 * fetched at once, without a whole cycle (no /v1/events request).
 */
static void
wait_between_cycles(long wait_ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
		int			sqlerrcode;

		if (left <= 0)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			return;
		if (sb_thin_take_wake())
			while (run_thin_fetches(&sqlerrcode) == STEP_MORE)
				;
	}
}

/* Entry point of the worker. */
void
stripe_billing_worker_main(Datum arg)
{
	int			failures = 0;
	char	   *database;
	char	   *role;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	/* every request of the worker within max_requests_per_second (rate.c) */
	sb_rate_every_request = true;

	database = MemoryContextStrdup(TopMemoryContext, sb_database);
	role = MemoryContextStrdup(TopMemoryContext, sb_worker_role);
	BackgroundWorkerInitializeConnection(database, role[0] ? role : NULL, 0);
	/* from now on, a committed thin event wakes us (thin.c) */
	sb_thin_worker_attach();
	/* over anything the database or role set: nothing planted on a path runs here */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	elog(LOG, "stripe_billing sync worker started in database \"%s\" as %s%s%s",
		 sb_database, sb_worker_role[0] ? "role \"" : "the bootstrap superuser",
		 sb_worker_role, sb_worker_role[0] ? "\"" : "");

	for (;;)
	{
		StepResult	result = STEP_DONE;
		StepResult	thin;
		int			sqlerrcode = 0;
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (strcmp(sb_database, database) != 0 || strcmp(sb_worker_role, role) != 0)
			{
				/* the postmaster starts us again, in the new database or as the new role */
				elog(LOG, "stripe_billing.database or stripe_billing.worker_role changed: the sync worker restarts");
				proc_exit(1);
			}
		}

		/* thin events first: they wait on nothing but their fetch */
		(void) sb_thin_take_wake();
		thin = run_thin_fetches(&sqlerrcode);

		/* pages of events, each in its own transaction */
		for (int page = 0; page < PAGES_PER_CYCLE; page++)
		{
			result = run_step("stripe_billing: polling /v1/events",
							  "poll", &sqlerrcode);
			CHECK_FOR_INTERRUPTS();
			/* a page that got through is progress: failures start over */
			if (result == STEP_MORE || result == STEP_DONE)
				failures = 0;
			if (result != STEP_MORE)
				break;
		}

		/*
		 * a backfill (first start) and a reconciliation, some pages a cycle,
		 * so that events keep flowing meanwhile
		 */
		if (result == STEP_DONE || result == STEP_MORE)
			result = run_pages("stripe_billing: backfilling the account's objects", "backfill",
							   result, &failures, &sqlerrcode);
		if (result == STEP_DONE || result == STEP_MORE)
			result = run_pages("stripe_billing: reconciling with Stripe", "reconcile",
							   result, &failures, &sqlerrcode);

		/* caught up: the events listed late, behind the cursor */
		if (result == STEP_DONE &&
			run_step("stripe_billing: re-reading /v1/events for late-listed events",
					 "lookback", &sqlerrcode) == STEP_FAILED)
			result = STEP_FAILED;

		/* thin events missed by webhook: GET /v2/core/events, then fetched */
		if (sb_thin_events && (result == STEP_DONE || result == STEP_MORE))
		{
			StepResult	listed = STEP_DONE;

			for (int i = 0; i < THIN_POLLS_PER_CYCLE; i++)
			{
				listed = run_step("stripe_billing: listing /v2/core/events for thin events",
								  "thin_poll", &sqlerrcode);
				CHECK_FOR_INTERRUPTS();
				if (listed != STEP_MORE)
					break;
			}
			if (listed == STEP_FAILED)
				result = STEP_FAILED;
			else if (listed == STEP_MORE && result == STEP_DONE)
				result = STEP_MORE;
			if (thin != STEP_FAILED)
				thin = run_thin_fetches(&sqlerrcode);
		}

		/* connected accounts due (Connect), one a transaction, an account's failure its own */
		if (result == STEP_DONE || result == STEP_MORE)
		{
			int			budget = account_polls_per_cycle();

			for (int i = 0; i < budget; i++)
			{
				StepResult	polled = run_step("stripe_billing: polling a connected account's events",
											  "poll_accounts", &sqlerrcode);

				CHECK_FOR_INTERRUPTS();
				if (polled == STEP_FAILED)
					result = STEP_FAILED;
				if (polled != STEP_MORE)
					break;
				/* the budget spent with accounts still due: no sleep */
				if (i == budget - 1)
					result = STEP_MORE;
			}
		}

		/* the duties, each in a transaction of its own (see locks.c) */
		if (result == STEP_DONE || result == STEP_MORE)
		{
			if (run_step("stripe_billing: sending usage", "usage", &sqlerrcode) == STEP_FAILED ||
				run_step("stripe_billing: retrying failed events", "retry", &sqlerrcode) == STEP_FAILED)
				result = STEP_FAILED;
			for (int i = 0; i < REFETCHES_PER_CYCLE && result != STEP_FAILED; i++)
			{
				StepResult	refetch = run_step("stripe_billing: re-fetching an object marked by a tie",
											   "refetch", &sqlerrcode);

				CHECK_FOR_INTERRUPTS();
				if (refetch == STEP_FAILED)
					result = STEP_FAILED;
				if (refetch != STEP_MORE)
					break;
			}
		}

		/* (thin fetches left waiting: no sleep; a failure of theirs backs off too) */
		if (thin == STEP_FAILED)
			result = STEP_FAILED;
		else if (thin == STEP_MORE && result == STEP_DONE)
			result = STEP_MORE;

		if (result == STEP_FAILED)
			wait_ms = backoff_ms(failures++, sqlerrcode);
		else
		{
			failures = 0;
			wait_ms = result == STEP_MORE ? 0 : sb_poll_interval;
		}

		/*
		 * What this cycle's transactions wrote, to the cumulative statistics
		 * that autovacuum and pg_stat_user_tables go by: a background worker
		 * has no idle loop that reports them (PostgresMain's).  At most once
		 * a second while busy; everything before a sleep.
		 */
		(void) pgstat_report_stat(wait_ms > 0);

		if (wait_ms > 0)
			wait_between_cycles(wait_ms);
	}
}
