/*-------------------------------------------------------------------------
 *
 * thin.c
 *	  Thin events (event destinations): waking the worker, and the requests
 *	  its fetches make.
 *
 * A thin event is a small signed notification ({"object":
 * "v2.core.event", id, type, created, context, related_object}) without
 * any object state.  The webhook route only records it, as "pending"
 * (events.c), and never waits on Stripe; the worker fetches it
 * (GET /v2/core/events/{id}, then the related object) and applies what it
 * fetched as a snapshot (stripe_billing._thin_fetch_one, in SQL, and
 * _apply_thin_object, events.c).
 *
 * So that "pending" lasts a fraction of a second rather than a poll
 * interval, a transaction that recorded a pending thin event sets the
 * worker's latch once it has committed (a transaction callback: the
 * worker then sees the row).  The worker publishes its process number and
 * database in a little shared memory (when the library is preloaded;
 * otherwise there is no worker to wake), and runs only its thin step when
 * woken between cycles.
 *
 * _thin_get makes one GET (no retry: the worker's backoff is per event,
 * recorded in stripe_billing.thin_fetches) in a thin event's context
 * (Stripe-Context) and returns whatever came back, an error response
 * included, as jsonb, for the SQL to judge.  _thin_related_path checks a
 * related object's url before it reaches a request: a path under /v1 or
 * /v2 of stripe_billing.api_base, never another host.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_thin_get);
PG_FUNCTION_INFO_V1(stripe_thin_related_path);

#if PG_VERSION_NUM >= 170000
#define MY_PROC_NUMBER MyProcNumber
#else
#define MY_PROC_NUMBER (MyProc->pgprocno)
#endif

/* What backends and the worker share (under shared_preload_libraries). */
typedef struct ThinShared
{
	pg_atomic_uint32 worker;	/* the worker's process number + 1; 0: none */
	Oid			database;		/* the worker's database (set before worker) */
	pg_atomic_uint32 wake;		/* a pending thin event committed since the
								 * worker last looked */
} ThinShared;

static ThinShared *thin_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This transaction recorded a pending thin event: wake the worker at commit. */
static bool pending_in_xact = false;

static void
thin_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(ThinShared)));
}

static void
thin_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	thin_shared = ShmemInitStruct("stripe_billing thin events", sizeof(ThinShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&thin_shared->worker, 0);
		thin_shared->database = InvalidOid;
		pg_atomic_init_u32(&thin_shared->wake, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Asks for the shared memory (from _PG_init, under shared_preload_libraries). */
void
sb_thin_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = thin_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = thin_shmem_startup;
}

/* Sets the worker's latch, if it runs in this database.  Never raises. */
static void
wake_worker(void)
{
	uint32		worker;

	if (thin_shared == NULL || (worker = pg_atomic_read_u32(&thin_shared->worker)) == 0)
		return;
	pg_read_barrier();
	if (thin_shared->database != MyDatabaseId)
		return;
	pg_atomic_write_u32(&thin_shared->wake, 1);
	SetLatch(&GetPGProcByNumber(worker - 1)->procLatch);
}

/*
 * At the end of a transaction that recorded a pending thin event: its
 * commit wakes the worker (which then sees the row); an abort forgets it.
 */
static void
thin_xact_callback(XactEvent event, void *arg)
{
	if (!pending_in_xact)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			wake_worker();
			pending_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* (a prepared one is seen by the worker's next cycle) */
			pending_in_xact = false;
			break;
		default:
			break;
	}
}

/* This transaction recorded a pending thin event (events.c). */
void
sb_thin_note_pending(void)
{
	static bool registered = false;

	if (thin_shared == NULL)
		return;					/* no worker to wake */
	if (!registered)
	{
		RegisterXactCallback(thin_xact_callback, NULL);
		registered = true;
	}
	pending_in_xact = true;
}

static void
worker_detach(int code, Datum arg)
{
	if (thin_shared != NULL)
		pg_atomic_write_u32(&thin_shared->worker, 0);
}

/* The worker, connected to its database: backends may wake it from now on. */
void
sb_thin_worker_attach(void)
{
	if (thin_shared == NULL)
		return;
	thin_shared->database = MyDatabaseId;
	pg_write_barrier();
	pg_atomic_write_u32(&thin_shared->worker, (uint32) MY_PROC_NUMBER + 1);
	before_shmem_exit(worker_detach, (Datum) 0);
}

/* For the worker: was it woken for a thin event since it last asked? */
bool
sb_thin_take_wake(void)
{
	return thin_shared != NULL && pg_atomic_exchange_u32(&thin_shared->wake, 0) != 0;
}

/* Pushes "key": <string, or null> into an object being built. */
static void
push_string(JsonbParseState **state, const char *key, const char *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, key);
	v.val.string.len = strlen(key);
	pushJsonbValue(state, WJB_KEY, &v);
	if (value)
	{
		v.type = jbvString;
		v.val.string.val = unconstify(char *, value);
		v.val.string.len = strlen(value);
	}
	else
		v.type = jbvNull;
	pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * stripe_billing._thin_get(path text, params jsonb, context text) -> jsonb
 *
 * One GET of stripe_billing.api_base || path (params form-encoded into the
 * query), with Stripe-Context: context when not NULL, as the worker's
 * thin event fetches make it; no retry.  Returns {"status": <HTTP status,
 * 0 without an answer>, "body": <the JSON answer, or null when it is not
 * JSON>, "date": <Stripe's Date header in Unix seconds, else now>,
 * "request_id", "error": <the transport failure, or null>,
 * "retry_after", "should_retry"}: an error answer is returned like any
 * other, for the caller to judge (thin events: stripe_billing._thin_fetch_one).
 * The path and the context are checked first; a missing API key, a
 * refused api_base, an answer over max_response_size or an interrupt raise.
 */
Datum
stripe_thin_get(PG_FUNCTION_ARGS)
{
	char	   *path = sb_text_arg(fcinfo, 0, "path");
	char	   *form = PG_ARGISNULL(1) ? "" : sb_form_encode(PG_GETARG_JSONB_P(1));
	char	   *context = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	SbHttpResponse *r;
	Jsonb	   *body;
	JsonbParseState *state = NULL;
	JsonbValue	v;
	char	   *error = NULL;

	sb_check_request_path(path);
	if (context)
		sb_check_context("context", context);
	r = sb_http_request_in_context("GET", path, form, NULL, NULL, context);
	body = r->status != 0 ? sb_parse_body(r) : NULL;
	if (r->network_error)
	{
		error = pstrdup(r->network_error);
		sb_scrub_secrets(error);
	}

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	v.type = jbvString;
	v.val.string.val = "status";
	v.val.string.len = 6;
	pushJsonbValue(&state, WJB_KEY, &v);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(r->status);
	pushJsonbValue(&state, WJB_VALUE, &v);
	v.type = jbvString;
	v.val.string.val = "body";
	v.val.string.len = 4;
	pushJsonbValue(&state, WJB_KEY, &v);
	if (body)
	{
		v.type = jbvBinary;
		v.val.binary.data = &body->root;
		v.val.binary.len = VARSIZE(body) - VARHDRSZ;
	}
	else
		v.type = jbvNull;
	pushJsonbValue(&state, WJB_VALUE, &v);
	v.type = jbvString;
	v.val.string.val = "date";
	v.val.string.len = 4;
	pushJsonbValue(&state, WJB_KEY, &v);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric((int64) sb_response_time(r));
	pushJsonbValue(&state, WJB_VALUE, &v);
	push_string(&state, "request_id", r->request_id);
	push_string(&state, "error", error);
	push_string(&state, "retry_after", r->retry_after);
	push_string(&state, "should_retry", r->should_retry);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL)));
}

/*
 * stripe_billing._thin_related_path(url text) -> text
 *
 * The path a thin event's related_object.url names, checked before any
 * request is made with it: a path under /v1/ or /v2/ ("/v1/customers/cus_1"),
 * or the same as a URL on stripe_billing.api_base itself; never another
 * host, a query, a fragment or a dot segment (sb_check_request_path).
 * Raises invalid_parameter_value naming the url otherwise.
 */
Datum
stripe_thin_related_path(PG_FUNCTION_ARGS)
{
	char	   *url = sb_text_arg(fcinfo, 0, "url");
	const char *path = url;
	size_t		base_len = strlen(sb_api_base);
	StringInfoData shown;

	while (base_len > 0 && sb_api_base[base_len - 1] == '/')
		base_len--;
	if (url[0] != '/' && base_len > 0 && strncmp(url, sb_api_base, base_len) == 0 &&
		url[base_len] == '/')
		path = url + base_len;	/* (the configured base itself: its path) */
	if (strncmp(path, "/v1/", 4) == 0 || strncmp(path, "/v2/", 4) == 0)
	{
		sb_check_request_path(path);
		PG_RETURN_TEXT_P(cstring_to_text(path));
	}
	initStringInfo(&shown);
	for (const char *p = url; *p && shown.len < 100; p++)
		appendStringInfoChar(&shown, (*p >= 0x20 && *p < 0x7f) ? *p : '?');
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("related_object.url \"%s\" is not a path under /v1 or /v2 of stripe_billing.api_base",
					shown.data),
			 errdetail("A thin event's related object is fetched from Stripe's API only, never from another host.")));
	PG_RETURN_NULL();			/* keep compiler quiet */
}
