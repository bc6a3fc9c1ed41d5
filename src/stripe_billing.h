/*-------------------------------------------------------------------------
 *
 * stripe_billing.h
 *	  Shared declarations of the stripe_billing extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STRIPE_BILLING_H
#define STRIPE_BILLING_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "pgtime.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/*
 * APIs that changed between the PostgreSQL versions built against (15 to
 * 18): one name for each, the version check here only.
 */
#if PG_VERSION_NUM >= 170000
/* 17 added the context to fill (NULL: palloc'd) */
#define sb_json_lexer(json, len, need_escapes) \
	makeJsonLexContextCstringLen(NULL, (json), (len), GetDatabaseEncoding(), (need_escapes))
#else
/* (and took the text as char *, though it only reads it) */
#define sb_json_lexer(json, len, need_escapes) \
	makeJsonLexContextCstringLen((char *) (json), (len), GetDatabaseEncoding(), (need_escapes))
#endif

#if PG_VERSION_NUM >= 180000
/* 18 added deferrable_ok (ours is not deferrable) */
#define sb_primary_key_index(rel) RelationGetPrimaryKeyIndex((rel), false)
#else
#define sb_primary_key_index(rel) RelationGetPrimaryKeyIndex(rel)
#endif

#if PG_VERSION_NUM >= 160000
/* 16 replaced the per-kind ACL checks with one */
#define sb_proc_aclcheck(fn, role, mode) object_aclcheck(ProcedureRelationId, (fn), (role), (mode))
#else
#define sb_proc_aclcheck(fn, role, mode) pg_proc_aclcheck((fn), (role), (mode))
#endif

#if PG_VERSION_NUM >= 170000
/* 17 moved the local transaction id, and let LockHeldByMe accept a stronger mode */
#define MY_LXID (MyProc->vxid.lxid)
#define sb_lock_held_by_me(tag, mode) LockHeldByMe((tag), (mode), false)
#else
#define MY_LXID (MyProc->lxid)
#define sb_lock_held_by_me(tag, mode) LockHeldByMe((tag), (mode))
#endif

/*
 * SQLSTATEs of our own, in an implementation-defined class ("SB").
 * SBSxx: a webhook signature was refused (the app answers 400).
 * SBCxx: the extension is not configured for the call (the app answers 500).
 * SBAxx: a Stripe API call failed (Stripe's error, or the network).
 * SBExx: an event was refused (the app answers 400), or its object could
 *        not be mapped (SBE03: recorded as failed, not raised to the caller).
 */
#define ERRCODE_SB_NO_SIGNATURE_HEADER	MAKE_SQLSTATE('S','B','S','0','1')
#define ERRCODE_SB_NO_TIMESTAMP			MAKE_SQLSTATE('S','B','S','0','2')
#define ERRCODE_SB_NO_V1_SIGNATURE		MAKE_SQLSTATE('S','B','S','0','3')
#define ERRCODE_SB_SIGNATURE_MISMATCH	MAKE_SQLSTATE('S','B','S','0','4')
#define ERRCODE_SB_TIMESTAMP_TOO_OLD	MAKE_SQLSTATE('S','B','S','0','5')
#define ERRCODE_SB_TOO_MANY_SIGNATURES	MAKE_SQLSTATE('S','B','S','0','6')
#define ERRCODE_SB_NO_WEBHOOK_SECRET	MAKE_SQLSTATE('S','B','C','0','1')
#define ERRCODE_SB_MALFORMED_EVENT		MAKE_SQLSTATE('S','B','E','0','1')
#define ERRCODE_SB_LIVEMODE_MISMATCH	MAKE_SQLSTATE('S','B','E','0','2')
#define ERRCODE_SB_INVALID_OBJECT		MAKE_SQLSTATE('S','B','E','0','3')
#define ERRCODE_SB_NO_API_KEY			MAKE_SQLSTATE('S','B','C','0','2')
#define ERRCODE_SB_API_BASE_REFUSED		MAKE_SQLSTATE('S','B','C','0','3')
#define ERRCODE_SB_API_INVALID_REQUEST	MAKE_SQLSTATE('S','B','A','0','1')
#define ERRCODE_SB_API_CARD				MAKE_SQLSTATE('S','B','A','0','2')
#define ERRCODE_SB_API_AUTHENTICATION	MAKE_SQLSTATE('S','B','A','0','3')
#define ERRCODE_SB_API_RATE_LIMIT		MAKE_SQLSTATE('S','B','A','0','4')
#define ERRCODE_SB_API_SERVER			MAKE_SQLSTATE('S','B','A','0','5')
#define ERRCODE_SB_API_IDEMPOTENCY		MAKE_SQLSTATE('S','B','A','0','6')
#define ERRCODE_SB_NETWORK				MAKE_SQLSTATE('S','B','A','0','7')

/* guc.c: the settings */
extern char *sb_webhook_secret;
extern char *sb_api_key;
extern bool sb_livemode;
extern int	sb_webhook_tolerance;
extern int	sb_past_due_grace;
extern int	sb_access_slack;
extern char *sb_test_clock;
extern char *sb_api_base;
extern char *sb_api_version;
extern int	sb_connect_timeout;
extern int	sb_request_timeout;
extern int	sb_max_network_retries;
extern char *sb_database;
extern char *sb_worker_role;
extern int	sb_poll_interval;
extern int	sb_poll_lookback;
extern int	sb_max_response_size;	/* kB */
extern int	sb_max_requests_per_second;
extern bool sb_backfill_on_start;
extern int	sb_backfill_invoices_since;	/* s */
extern int	sb_reconcile_interval;	/* s */
extern int	sb_connect_idle_interval;	/* s */
extern int	sb_connect_active_window;	/* s */
extern char *sb_meter_events_base;
#define SB_USAGE_API_V2 2
#define SB_USAGE_API_V1 1
extern int	sb_usage_api;
/* stripe_billing.paused_collection_access: what a paused collection grants */
#define SB_PAUSED_COLLECTION_KEEP 0
#define SB_PAUSED_COLLECTION_REVOKE 1
extern int	sb_paused_collection_access;
extern int	sb_usage_concurrency;
extern bool sb_thin_events;
/* stripe_billing.dispute_access: what an open dispute does to its customer's features */
#define SB_DISPUTE_ACCESS_KEEP 0
#define SB_DISPUTE_ACCESS_REVOKE 1
extern int	sb_dispute_access;

extern void sb_define_settings(void);

/* secrets.c */
extern void sb_scrub_secrets(char *s);
extern void sb_install_secret_scrubber(void);

/* The value of key in a jsonb object container, or NULL when absent. */
static inline JsonbValue *
sb_jsonb_key(JsonbContainer *object, const char *key, JsonbValue *buf)
{
	return getKeyJsonValueFromContainer(object, key, strlen(key), buf);
}

/*
 * Is this a connected account's id (Stripe Connect): "acct_" and 1 to 250
 * letters or digits?  It goes into the Stripe-Account header and into keys.
 */
static inline bool
sb_is_account_id(const char *s)
{
	int			n = 0;

	if (strncmp(s, "acct_", 5) != 0)
		return false;
	for (s += 5; *s; s++, n++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
			return false;
	return n >= 1 && n <= 250;
}

/* Are a and b the same account (NULL: the platform's own)? */
static inline bool
sb_same_account(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

/* extension.c */
extern Oid	sb_extension_oid(void);
extern Oid	sb_extension_owner(Oid extension);
extern Oid	sb_extension_function(const char *name, int nargs, const Oid *argtypes,
								  bool missing_ok);

/* locks.c */
typedef struct SbLockSet SbLockSet;
extern SbLockSet *sb_lockset_create(void);
extern void sb_lockset_add_key(SbLockSet *set, const char *kind, const char *id, int len);
extern void sb_lockset_add_customer(SbLockSet *set, const char *id, int len);
extern void sb_lockset_add_user(SbLockSet *set, const char *user_ref, int len);
extern void sb_lockset_add_object(SbLockSet *set, JsonbContainer *object, const char *kind,
								  const char *account);
extern void sb_lockset_acquire(SbLockSet *set);

/* worker.c */
extern void sb_register_worker(void);

/* http.c */
typedef struct SbHttpResponse
{
	int			status;			/* 0: no HTTP response (see network_error) */
	char	   *body;
	int			body_len;
	char	   *network_error;	/* transport failure, or NULL */
	bool		timed_out;
	char	   *request_id;		/* response headers, or NULL */
	char	   *date;
	char	   *retry_after;
	char	   *should_retry;
} SbHttpResponse;

extern void sb_check_api_base(const char *base);
extern void sb_check_settings(void);
extern void sb_check_meter_events_base(const char *base);

/* rate.c */
extern bool sb_rate_every_request;
extern bool sb_rate_due(void);
extern void sb_rate_count(void);
extern void sb_rate_wait(void);

extern SbHttpResponse *sb_http_request(const char *method, const char *path,
									   const char *form, const char *idempotency_key,
									   const char *account);
extern SbHttpResponse *sb_http_request_in_context(const char *method, const char *path,
												  const char *form, const char *idempotency_key,
												  const char *account, const char *context);
extern void sb_http_prefetch(const char *path, const char *query, const char *account);
extern SbHttpResponse *sb_http_take_prefetched(const char *path, const char *query,
											   const char *account);
extern bool sb_http_prefetched_is(const char *path, const char *query, const char *account);
extern char *sb_form_encode(Jsonb *params);
extern void sb_form_append(StringInfo form, const char *name, const char *value);
extern SbHttpResponse **sb_http_post_all(const char *base, const char *path, char **bodies, int n,
										 const char *secret, int parallel, const char *account);

/* api.c */
extern void sb_check_account(const char *argument, const char *account);
extern bool sb_is_context(const char *s);
extern char *sb_context_account(const char *context);
extern void sb_check_context(const char *argument, const char *context);
extern void sb_check_request_path(const char *path);
extern pg_time_t sb_response_time(SbHttpResponse *r);
extern char *sb_account_arg(FunctionCallInfo fcinfo, int argno);
extern char *sb_text_arg(FunctionCallInfo fcinfo, int argno, const char *name);
extern Jsonb *sb_stripe_call(const char *method, const char *path, Jsonb *params,
							 const char *idempotency_key, const char *account);
extern char *sb_object_string(Jsonb *object, const char *key);
extern Jsonb *sb_parse_body(SbHttpResponse *r);
extern Jsonb *sb_stripe_call_form(const char *method, const char *path, const char *form,
								  const char *idempotency_key, const char *account);
extern Jsonb *sb_stripe_get(const char *path, const char *query, const char *account,
							pg_time_t *response_time);
extern char *sb_list_page_edge_id(Jsonb *page, bool first);

/* signatures.c */
extern void sb_check_signature(const char *payload, size_t payload_len,
							   const char *header, size_t header_len,
							   const char *const *secrets, const size_t *secret_lens,
							   int nsecrets, int tolerance, pg_time_t now);
extern int	sb_split_secret_list(const char *list, char ***secrets,
								 size_t **secret_lens);

/* entitlements.c */
extern TimestampTz sb_now(void);

/* citus.c */
extern bool sb_citus_features_placement(Oid relid, Oid *placement, Oid *placement_pkey);

/* events.c */
extern const char *sb_apply_event(Jsonb *event, const char *source);
extern bool sb_parse_rfc3339(const char *s, int len, TimestampTz *result);
extern void sb_apply_api_object(Jsonb *object, pg_time_t snapshot, const char *request_id,
								const char *account);
extern Jsonb *sb_apply_snapshots(Jsonb *objects, TimestampTz snapshot, const char *source,
								 Jsonb *replacements, bool derive, const char *account);

/* thin.c: thin events (event destinations) */
extern void sb_thin_note_pending(void);
extern void sb_thin_shmem_init(void);
extern void sb_thin_worker_attach(void);
extern bool sb_thin_take_wake(void);

#endif							/* STRIPE_BILLING_H */
