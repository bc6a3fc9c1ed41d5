/*-------------------------------------------------------------------------
 *
 * stripe_billing.c
 *	  Module entry point: settings, and keeping the secret ones secret.
 *
 * stripe_billing.api_key and stripe_billing.webhook_secret may be set by
 * superusers only, in postgresql.conf, ALTER SYSTEM or SET (never ALTER
 * DATABASE/ROLE ... SET: pg_db_role_setting is readable by every role), are
 * shown to superusers only (SHOW masks them for others, pg_settings and SHOW
 * ALL leave them out), and are scrubbed from every message this process
 * emits (server log and client alike) and from error texts the extension
 * stores.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "stripe_billing.h"

#ifdef PG_MODULE_MAGIC_EXT
PG_MODULE_MAGIC_EXT(.name = "stripe_billing",.version = SB_VERSION);
#else
PG_MODULE_MAGIC;
#endif

char	   *sb_webhook_secret = NULL;
char	   *sb_api_key = NULL;
bool		sb_livemode = false;
int			sb_webhook_tolerance = 300;
int			sb_past_due_grace = 0;
int			sb_access_slack = 86400;
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
char	   *sb_meter_events_base = NULL;
int			sb_usage_api = SB_USAGE_API_V2;
int			sb_usage_concurrency = 4;
int			sb_max_response_size = 64 * 1024;	/* kB */

static emit_log_hook_type prev_emit_log_hook = NULL;

/* What a secret looks like when shown to someone who may not see it. */
#define MASKED_SECRET "********"

/* Key prefixes Stripe gives its secrets; literals starting so are scrubbed. */
static const char *const secret_prefixes[] = {
	"whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_"
};

/* Names of the secret settings; statements naming them are never logged. */
static const char *const secret_settings[] = {
	"stripe_billing.api_key", "stripe_billing.webhook_secret"
};

void		_PG_init(void);

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

/* Separators of a secret list (stripe_billing.webhook_secret). */
#define SECRET_LIST_SEPARATORS ", \t"

/*
 * Finds the first occurrence in s of any secret in list (a comma-separated
 * setting); sets *len to its length.  Secrets shorter than 8 bytes are not
 * looked for: masking every "a" in a message would hide nothing.
 */
static char *
find_configured(const char *s, const char *list, size_t *len)
{
	const char *tok = list;

	if (list == NULL)
		return NULL;
	while (*tok)
	{
		size_t		n;

		tok += strspn(tok, SECRET_LIST_SEPARATORS);
		n = strcspn(tok, SECRET_LIST_SEPARATORS);
		if (n >= 8)
		{
			for (const char *p = s; *p; p++)
				if (strncmp(p, tok, n) == 0)
				{
					*len = n;
					return unconstify(char *, p);
				}
		}
		tok += n;
	}
	return NULL;
}

/* Overwrites, in place, every occurrence in s of a secret of list. */
static void
mask_configured(char *s, const char *list)
{
	char	   *p;
	size_t		n;

	while ((p = find_configured(s, list, &n)) != NULL)
		memset(p, '*', n);
}

/*
 * Finds the next mention in s of a secret setting's name, also quoted or
 * spaced as SQL allows ("stripe_billing" . "api_key"); sets *end to just
 * after it.
 */
static char *
find_secret_setting(const char *s, char **end)
{
	for (const char *p = s; *p; p++)
	{
		const char *q = p;
		bool		quoted;

		quoted = *q == '"';
		q += quoted;
		if (pg_strncasecmp(q, "stripe_billing", 14) != 0)
			continue;
		q += 14;
		if (quoted && *q++ != '"')
			continue;
		q += strspn(q, " \t");
		if (*q++ != '.')
			continue;
		q += strspn(q, " \t");
		quoted = *q == '"';
		q += quoted;
		for (int i = 0; i < lengthof(secret_settings); i++)
		{
			const char *name = secret_settings[i] + 15;	/* after "stripe_billing." */
			size_t		n = strlen(name);

			if (pg_strncasecmp(q, name, n) == 0 &&
				(quoted ? q[n] == '"' : !(isalnum((unsigned char) q[n]) || q[n] == '_')))
			{
				*end = unconstify(char *, q + n + quoted);
				return unconstify(char *, p);
			}
		}
	}
	return NULL;
}

/*
 * p follows the name of a secret setting in a message: if an assignment
 * follows ("= v", "TO v", "changed to v", "', v"), masks the value, quoted
 * or not.  Returns where scanning may resume.
 */
static char *
mask_assigned_value(char *p)
{
	static const char *const assigners[] = {"=", ",", "to ", "changed to "};
	bool		assigned = false;
	char		quote;

	p += strspn(p, "\"' \t");
	for (int i = 0; i < lengthof(assigners) && !assigned; i++)
		if (pg_strncasecmp(p, assigners[i], strlen(assigners[i])) == 0)
		{
			p += strlen(assigners[i]);
			assigned = true;
		}
	if (!assigned)
		return p;
	p += strspn(p, " \t");

	quote = (*p == '\'' || *p == '"') ? *p++ : '\0';
	for (; *p && (quote ? *p != quote : !strchr(" \t\n;,)", *p)); p++)
		*p = '*';
	return p;
}

/*
 * Scrubs secrets from one message text, in place (the length never changes,
 * so nothing is allocated inside error reporting).
 */
static void
scrub_text(char *s)
{
	char	   *p;

	if (s == NULL)
		return;

	mask_configured(s, sb_webhook_secret);
	mask_configured(s, sb_api_key);

	/* Literals that look like Stripe secrets: keep the prefix, hide the rest. */
	for (int i = 0; i < lengthof(secret_prefixes); i++)
	{
		size_t		plen = strlen(secret_prefixes[i]);

		for (p = strstr(s, secret_prefixes[i]); p; p = strstr(p, secret_prefixes[i]))
		{
			p += plen;
			/* (Stripe's own messages show keys half-masked: sk_test_****1234) */
			while (isalnum((unsigned char) *p) || *p == '_' || *p == '*')
				*p++ = '*';
		}
	}

	/*
	 * A message naming a secret setting may carry a value we do not know
	 * yet (log_statement's "statement: SET ... = '...'", a reload's
	 * "parameter ... changed to ...", set_config('...', '...')).
	 */
	for (char *end; (p = find_secret_setting(s, &end)) != NULL; s = p)
		p = mask_assigned_value(end);
}

/*
 * Scrubs secrets from a text the extension stores or raises (an upstream
 * error may echo a header), in place.
 */
void
sb_scrub_secrets(char *s)
{
	scrub_text(s);
}

/* Does this statement text carry, or name, a secret? */
static bool
mentions_secret(const char *query)
{
	size_t		n;
	char	   *end;

	if (query == NULL)
		return false;
	for (int i = 0; i < lengthof(secret_prefixes); i++)
		if (strstr(query, secret_prefixes[i]) != NULL)
			return true;
	if (find_secret_setting(query, &end) != NULL)
		return true;
	return find_configured(query, sb_webhook_secret, &n) != NULL ||
		find_configured(query, sb_api_key, &n) != NULL;
}

/*
 * emit_log_hook: scrub secrets from every report and drop the STATEMENT line
 * when the statement itself carries one.
 */
static void
scrub_secrets_hook(ErrorData *edata)
{
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);

	scrub_text(edata->message);
	scrub_text(edata->detail);
	scrub_text(edata->detail_log);
	scrub_text(edata->hint);
	scrub_text(edata->context);
	scrub_text(edata->internalquery);

	if (mentions_secret(debug_query_string))
		edata->hide_stmt = true;
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

/* Did shared_preload_libraries load us (backends inherit it from the postmaster)? */
static bool preloaded = false;

PG_FUNCTION_INFO_V1(stripe_preloaded);

/*
 * stripe_billing._preloaded() -> boolean
 *
 * Whether shared_preload_libraries loaded the library: the background
 * worker runs only then.
 */
Datum
stripe_preloaded(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(preloaded);
}

static const struct config_enum_entry usage_api_options[] = {
	{"v2", SB_USAGE_API_V2, false},
	{"v1", SB_USAGE_API_V1, false},
	{NULL, 0, false}
};

/* Module load: define settings and install the scrubbing hook. */
void
_PG_init(void)
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
							"Most list requests per second a session sends for backfill and reconciliation.",
							"Per session (the worker is one); Stripe's 429 answers are honoured besides.",
							&sb_max_requests_per_second,
							20, 1, 10000,
							PGC_SUSET,
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

	MarkGUCPrefixReserved("stripe_billing");

	if (process_shared_preload_libraries_in_progress)
	{
		preloaded = true;
		sb_register_worker();
	}

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = scrub_secrets_hook;
}
