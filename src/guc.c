/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The settings (stripe_billing.*), and the hooks that keep the secret
 *	  ones secret.
 *
 * stripe_billing.api_key and stripe_billing.webhook_secret may be set by
 * superusers only, in postgresql.conf, ALTER SYSTEM or SET (never ALTER
 * DATABASE/ROLE ... SET: pg_db_role_setting is readable by every role), and
 * are shown to superusers only (SHOW masks them for others, pg_settings and
 * SHOW ALL leave them out).  secrets.c keeps them out of messages.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "stripe_billing.h"

char	   *sb_webhook_secret = NULL;
char	   *sb_api_key = NULL;
bool		sb_livemode = false;
int			sb_webhook_tolerance = 300;
int			sb_past_due_grace = 0;
int			sb_access_slack = 86400;
int			sb_paused_collection_access = SB_PAUSED_COLLECTION_KEEP;
char	   *sb_test_clock = NULL;
char	   *sb_api_base = NULL;
char	   *sb_api_version = NULL;
int			sb_connect_timeout = 5000;
int			sb_request_timeout = 30000;
int			sb_max_network_retries = 1;
char	   *sb_database = NULL;
char	   *sb_worker_role = NULL;
int			sb_poll_interval = 10000;
int			sb_poll_lookback = 300;
int			sb_max_requests_per_second = 20;
bool		sb_backfill_on_start = true;
int			sb_backfill_invoices_since = 90 * 86400;
int			sb_reconcile_interval = 86400;
int			sb_connect_idle_interval = 3600;
int			sb_connect_active_window = 600;
char	   *sb_meter_events_base = NULL;
bool		sb_thin_events = false;
int			sb_usage_api = SB_USAGE_API_V2;
int			sb_usage_concurrency = 4;
int			sb_max_response_size = 64 * 1024;	/* kB */
int			sb_dispute_access = SB_DISPUTE_ACCESS_KEEP;

/* What a secret looks like when shown to someone who may not see it. */
#define MASKED_SECRET "********"

/* Shows a secret setting: the value to superusers, a mask to others. */
static const char *
show_secret(const char *value)
{
	if (value == NULL || value[0] == '\0')
		return "";
	if (superuser())
		return value;
	return MASKED_SECRET;
}

/* SHOW hook of stripe_billing.webhook_secret. */
static const char *
show_webhook_secret(void)
{
	return show_secret(sb_webhook_secret);
}

/* SHOW hook of stripe_billing.api_key. */
static const char *
show_api_key(void)
{
	return show_secret(sb_api_key);
}

/*
 * check_hook of the secret settings: refuse values stored where other roles
 * can read them.  ALTER DATABASE/ROLE ... SET (and a function's SET clause)
 * validate with PGC_S_TEST and land in a catalog every role reads; values
 * already there arrive with their own sources at session start.
 */
static bool
check_secret_source(char **newval, void **extra, GucSource source)
{
	if (source == PGC_S_TEST || source == PGC_S_DATABASE ||
		source == PGC_S_USER || source == PGC_S_DATABASE_USER)
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("secret settings of stripe_billing cannot be set per database, role or function");
		GUC_check_errdetail("pg_db_role_setting and pg_proc are readable by every role.");
		GUC_check_errhint("Use postgresql.conf or ALTER SYSTEM.");
		return false;
	}
	return true;
}

/*
 * check_hook of settings sent in a request header (stripe_billing.api_version):
 * printable ASCII only, so nothing can end the header line.
 */
static bool
check_header_value(char **newval, void **extra, GucSource source)
{
	for (const char *p = *newval; p && *p; p++)
		if (*p < 0x20 || *p > 0x7e)
		{
			GUC_check_errdetail("The value is sent in a request header: printable ASCII characters only.");
			return false;
		}
	return true;
}

/* The values of stripe_billing.usage_api. */
static const struct config_enum_entry usage_api_options[] = {
	{"v2", SB_USAGE_API_V2, false},
	{"v1", SB_USAGE_API_V1, false},
	{NULL, 0, false}
};

/* The values of stripe_billing.paused_collection_access. */
static const struct config_enum_entry paused_collection_access_options[] = {
	{"keep", SB_PAUSED_COLLECTION_KEEP, false},
	{"revoke", SB_PAUSED_COLLECTION_REVOKE, false},
	{NULL, 0, false}
};

/* The values of stripe_billing.dispute_access. */
static const struct config_enum_entry dispute_access_options[] = {
	{"keep", SB_DISPUTE_ACCESS_KEEP, false},
	{"revoke", SB_DISPUTE_ACCESS_REVOKE, false},
	{NULL, 0, false}
};

/* Defines the settings and reserves their prefix (from _PG_init). */
void
sb_define_settings(void)
{
	DefineCustomStringVariable("stripe_billing.webhook_secret",
							   "Webhook signing secret(s), comma-separated for rotation.",
							   "Secret: settable and visible by superusers only.",
							   &sb_webhook_secret,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_secret_source, NULL, show_webhook_secret);

	DefineCustomStringVariable("stripe_billing.api_key",
							   "Stripe secret API key.",
							   "Secret: settable and visible by superusers only.",
							   &sb_api_key,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_secret_source, NULL, show_api_key);

	DefineCustomBoolVariable("stripe_billing.livemode",
							 "Accept live-mode events (on) or test-mode events (off).",
							 NULL,
							 &sb_livemode,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.webhook_tolerance",
							"Maximum age of a webhook signature timestamp; 0 disables the check.",
							NULL,
							&sb_webhook_tolerance,
							300, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.past_due_grace",
							"How long past the period end a past_due subscription keeps access.",
							"Bounded by stripe_billing.access_slack.  After a change, run stripe_refresh_entitlements().",
							&sb_past_due_grace,
							0, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.access_slack",
							"Access ends this long after the period end, whatever the status says, unless a newer period arrives.",
							"After a change, run stripe_refresh_entitlements().",
							&sb_access_slack,
							86400, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("stripe_billing.paused_collection_access",
							 "What a subscription whose collection is paused grants: keep (its features, as Stripe keeps it active) or revoke (none).",
							 "After a change, run stripe_refresh_entitlements().",
							 &sb_paused_collection_access,
							 SB_PAUSED_COLLECTION_KEEP,
							 paused_collection_access_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.test_clock",
							   "For tests: the time entitlement checks use instead of now().",
							   NULL,
							   &sb_test_clock,
							   "",
							   PGC_SUSET,
							   GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.api_base",
							   "Base URL of the Stripe API.",
							   "https:// only; http:// is allowed to loopback hosts, for tests.",
							   &sb_api_base,
							   "https://api.stripe.com",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.api_version",
							   "Stripe API version sent as Stripe-Version.",
							   NULL,
							   &sb_api_version,
							   "2025-03-31.basil",
							   PGC_SUSET,
							   0,
							   check_header_value, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.connect_timeout",
							"Time allowed to connect to the Stripe API.",
							NULL,
							&sb_connect_timeout,
							5000, 1, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.request_timeout",
							"Time allowed for a whole Stripe API request.",
							NULL,
							&sb_request_timeout,
							30000, 1, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.max_network_retries",
							"Retries of a failed Stripe API request (network, 429, 5xx), with the same idempotency key.",
							NULL,
							&sb_max_network_retries,
							1, 0, 10,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.database",
							   "Database the background worker syncs.",
							   "After a change and a reload, the worker restarts in the new database.",
							   &sb_database,
							   "postgres",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.worker_role",
							   "Role the background worker runs as; empty: the bootstrap superuser.",
							   "It needs LOGIN and EXECUTE on stripe_billing._worker_step(text, text); after a change and a reload, the worker restarts as the new role.",
							   &sb_worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.max_response_size",
							"Largest Stripe API response body accepted.",
							NULL,
							&sb_max_response_size,
							64 * 1024, 64, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.poll_interval",
							"Time between the background worker's polls of /v1/events.",
							NULL,
							&sb_poll_interval,
							10000, 100, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.poll_lookback",
							"How far back each poll cycle re-reads /v1/events for events listed late; 0 disables it.",
							"Stripe's list is eventually consistent: an event can be listed after newer ones.",
							&sb_poll_lookback,
							300, 0, 30 * 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.max_requests_per_second",
							"Most requests per second the worker sends, and a session's backfill and reconciliation lists.",
							"Per session; the worker's catch-up on the platform's own backlog is not slowed, and Stripe's 429 answers are honoured besides.",
							&sb_max_requests_per_second,
							20, 1, 10000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("stripe_billing.thin_events",
							 "Whether the worker also lists GET /v2/core/events, for thin events whose notification was missed.",
							 "Turn it on when the account sends thin events to event destinations; they are fetched and applied whatever this says.",
							 &sb_thin_events,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("stripe_billing.backfill_on_start",
							 "Whether the worker backfills the account's objects on its first start in a database.",
							 NULL,
							 &sb_backfill_on_start,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.backfill_invoices_since",
							"How far back a backfill lists invoices.",
							NULL,
							&sb_backfill_invoices_since,
							90 * 86400, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.reconcile_interval",
							"Time between the worker's reconciliations with Stripe; 0 disables them.",
							NULL,
							&sb_reconcile_interval,
							86400, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.connect_idle_interval",
							"Time between the worker's polls of a connected account without recent events.",
							"Each poll is one request (two while the account's events are recent).",
							&sb_connect_idle_interval,
							3600, 1, 7 * 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.connect_active_window",
							"How recent a connected account's last event must be for it to be polled every cycle.",
							"An event received by webhook or polling counts.",
							&sb_connect_active_window,
							600, 0, 7 * 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("stripe_billing.meter_events_base",
							   "Base URL of Stripe's meter event stream (Billing Meter Events v2).",
							   "https:// only; http:// is allowed to loopback hosts, for tests.",
							   &sb_meter_events_base,
							   "https://meter-events.stripe.com",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("stripe_billing.usage_api",
							 "How usage is sent: v2 (meter event stream, batches of 100) or v1 (one request per row).",
							 NULL,
							 &sb_usage_api,
							 SB_USAGE_API_V2,
							 usage_api_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("stripe_billing.usage_concurrency",
							"Requests of the meter event stream in flight at once.",
							NULL,
							&sb_usage_concurrency,
							4, 1, 16,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("stripe_billing.dispute_access",
							 "What an open dispute does to the features of its customer's users: keep them, or revoke them until it closes.",
							 "After a change, run stripe_refresh_entitlements().",
							 &sb_dispute_access,
							 SB_DISPUTE_ACCESS_KEEP,
							 dispute_access_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("stripe_billing");

}
