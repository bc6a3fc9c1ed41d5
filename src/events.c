/*-------------------------------------------------------------------------
 *
 * events.c
 *	  The event ledger: stripe_apply_event and stripe_handle_webhook.
 *
 * Every event received is recorded in stripe_billing.events, keyed by its
 * Stripe id, inside the caller's transaction.  The insert is an
 * INSERT ... ON CONFLICT DO NOTHING: a second delivery of an id finds the
 * first one's row and reports "duplicate"; when two sessions deliver the
 * same id at once, the second waits for the first to commit or abort, so an
 * event is recorded (and applied) exactly once.
 *
 * Events of mapped types are then applied onto the billing tables by the SQL
 * function of their object's kind (stripe_billing._apply_subscription, ...),
 * inside a subtransaction: when the object does not fit (wrong shape, bad
 * data) the mapping is rolled back and the event stays in the ledger as
 * "failed" with the error, while the caller's transaction goes on.  Ordering
 * (stale, ties, terminal states) is decided by the mapping, per object row.
 *
 * A verified webhook body that jsonb refuses (invalid UTF-8, a \u0000 escape,
 * a lone surrogate, nesting or a number beyond jsonb's limits) is kept too:
 * its header fields are read from the body text itself, and it is recorded
 * "failed" with its raw bytes (column body, no payload) and the reason.  Only
 * a body without a usable id (not JSON, no id, an id too long) is refused.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"
#include "kinds.h"

PG_FUNCTION_INFO_V1(stripe_apply_event);
PG_FUNCTION_INFO_V1(stripe_apply_events);
PG_FUNCTION_INFO_V1(stripe_apply_page);
PG_FUNCTION_INFO_V1(stripe_handle_webhook);
PG_FUNCTION_INFO_V1(stripe_handle_webhook_bytea);
PG_FUNCTION_INFO_V1(stripe_reapply_event);
PG_FUNCTION_INFO_V1(stripe_reapply_events);
PG_FUNCTION_INFO_V1(stripe_record_unparsed_event);
PG_FUNCTION_INFO_V1(stripe_split_list_page);
PG_FUNCTION_INFO_V1(stripe_derivation_deferred);
PG_FUNCTION_INFO_V1(stripe_apply_thin_object);

/*
 * Event ids and types are at most this long (bytes): they are indexed, and
 * an index entry must fit in a third of a page.
 */
#define EVENT_KEY_MAX 255

/* The fields of an event the ledger keeps in columns. */
typedef struct EventHeader
{
	char	   *id;
	char	   *type;
	char	   *api_version;	/* NULL when the event has none */
	bool		livemode;
	TimestampTz created;
	char	   *kind;			/* data.object.object; NULL if absent */
	bool		snapshot;		/* no event: a listed object or an API answer */
	char	   *account;		/* the connected account (Connect); NULL: the
								 * platform's own */
	bool		thin;			/* a thin event (object "v2.core.event"): kind
								 * is its related object's type */
	const char *thin_outcome;	/* of a thin event: recorded with it */
} EventHeader;

/* Raises the error for a missing or mistyped event field. */
static void
malformed(const char *field, const char *problem, const char *event_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_SB_MALFORMED_EVENT),
			 errmsg("malformed Stripe event: field \"%s\" %s", field, problem),
			 event_id ? errdetail("Event id: %s.", event_id) : 0));
}

/*
 * A required non-empty string field of at most EVENT_KEY_MAX bytes; field is
 * the dotted name for errors.
 */
static char *
required_string(JsonbContainer *object, const char *key, const char *field,
				const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);

	if (v == NULL || v->type == jbvNull)
		malformed(field, "is missing", event_id);
	if (v->type != jbvString)
		malformed(field, psprintf("must be a string, not %s", JsonbTypeName(v)), event_id);
	if (v->val.string.len == 0)
		malformed(field, "must not be empty", event_id);
	if (v->val.string.len > EVENT_KEY_MAX)
		malformed(field, psprintf("must be at most %d bytes, not %d",
								  EVENT_KEY_MAX, v->val.string.len), event_id);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* A required JSON object field. */
static JsonbContainer *
required_object(JsonbContainer *object, const char *key, const char *field,
				const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);

	if (v == NULL || v->type == jbvNull)
		malformed(field, "is missing", event_id);
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		malformed(field, psprintf("must be an object, not %s", JsonbTypeName(v)), event_id);
	return v->val.binary.data;
}

/* A required Unix-seconds integer field, as a timestamptz. */
static TimestampTz
required_unix_time(JsonbContainer *object, const char *key, const char *field,
				   const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);
	char	   *digits;
	int64		seconds;
	char	   *end;

	if (v == NULL || v->type == jbvNull)
		malformed(field, "is missing", event_id);
	if (v->type != jbvNumeric)
		malformed(field, psprintf("must be a number, not %s", JsonbTypeName(v)), event_id);
	digits = DatumGetCString(DirectFunctionCall1(numeric_out,
												 NumericGetDatum(v->val.numeric)));
	errno = 0;
	seconds = strtoi64(digits, &end, 10);
	if (errno != 0 || *end != '\0' || seconds < 0 || seconds > INT64CONST(253402300799))
		malformed(field, psprintf("must be a Unix time in whole seconds, not %s", digits),
				  event_id);
	return time_t_to_timestamptz((pg_time_t) seconds);
}

/* The container of data.object (parse_event checked it is an object). */
static JsonbContainer *
event_object(Jsonb *event)
{
	JsonbValue	buf;
	JsonbValue *data = sb_jsonb_key(&event->root, "data", &buf);

	return sb_jsonb_key(data->val.binary.data, "object", &buf)->val.binary.data;
}

/* Sets header->kind from data.object.object (NULL when absent). */
static void
parse_event_kind(Jsonb *event, EventHeader *header)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(event_object(event), "object", &buf);

	header->kind = (v && v->type == jbvString) ?
		pnstrdup(v->val.string.val, v->val.string.len) : NULL;
}

/* n decimal digits at s, into *value; false unless all are digits. */
static bool
read_digits(const char *s, int n, int *value)
{
	*value = 0;
	for (int i = 0; i < n; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		*value = *value * 10 + (s[i] - '0');
	}
	return true;
}

/*
 * Reads an RFC 3339 date-time, as API v2 writes times
 * ("2024-09-26T17:46:22.134Z", or with an offset "+02:00"), into *result;
 * false when s is not one (or names no valid day or time, or is out of
 * timestamptz's range).  Fractions beyond microseconds are cut.
 */
bool
sb_parse_rfc3339(const char *s, int len, TimestampTz *result)
{
	struct pg_tm tm;
	fsec_t		fsec = 0;
	int			tz = 0;
	int			at = 19;
	Timestamp	t;

	memset(&tm, 0, sizeof(tm));
	if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
		s[13] != ':' || s[16] != ':' ||
		!read_digits(s, 4, &tm.tm_year) || !read_digits(s + 5, 2, &tm.tm_mon) ||
		!read_digits(s + 8, 2, &tm.tm_mday) || !read_digits(s + 11, 2, &tm.tm_hour) ||
		!read_digits(s + 14, 2, &tm.tm_min) || !read_digits(s + 17, 2, &tm.tm_sec))
		return false;
	if (s[at] == '.')
	{
		int			digits = 0;

		for (at++; at < len && s[at] >= '0' && s[at] <= '9'; at++, digits++)
			if (digits < 6)
				fsec = fsec * 10 + (s[at] - '0');
		if (digits == 0)
			return false;
		for (; digits < 6; digits++)
			fsec *= 10;
	}
	if (at == len - 1 && (s[at] == 'Z' || s[at] == 'z'))
		tz = 0;
	else if (at == len - 6 && (s[at] == '+' || s[at] == '-') && s[at + 3] == ':')
	{
		int			hours;
		int			minutes;

		if (!read_digits(s + at + 1, 2, &hours) || !read_digits(s + at + 4, 2, &minutes) ||
			hours > 23 || minutes > 59)
			return false;
		/* (PostgreSQL counts zones in seconds west of Greenwich) */
		tz = (s[at] == '+' ? -1 : 1) * (hours * SECS_PER_HOUR + minutes * SECS_PER_MINUTE);
	}
	else
		return false;
	if (tm.tm_year < 1 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
		tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1] ||
		tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
		return false;
	if (tm2timestamp(&tm, fsec, &tz, &t) != 0 || !IS_VALID_TIMESTAMP(t))
		return false;
	*result = t;
	return true;
}

/* A required RFC 3339 date-time string field, as a timestamptz. */
static TimestampTz
required_rfc3339(JsonbContainer *object, const char *key, const char *field,
				 const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);
	TimestampTz result;

	if (v == NULL || v->type == jbvNull)
		malformed(field, "is missing", event_id);
	if (v->type != jbvString)
		malformed(field, psprintf("must be an RFC 3339 date-time string, not %s", JsonbTypeName(v)),
				  event_id);
	if (!sb_parse_rfc3339(v->val.string.val, v->val.string.len, &result))
		malformed(field, psprintf("must be an RFC 3339 date-time, not \"%s\"",
								  pnstrdup(v->val.string.val, Min(v->val.string.len, 64))),
				  event_id);
	return result;
}

/* An optional string field of an object (NULL when absent or null). */
static char *
optional_string(JsonbContainer *object, const char *key, const char *field, const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);

	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type != jbvString)
		malformed(field, psprintf("must be a string, not %s", JsonbTypeName(v)), event_id);
	if (v->val.string.len == 0)
		malformed(field, "must not be empty", event_id);
	if (v->val.string.len > 2048)
		malformed(field, psprintf("must be at most 2048 bytes, not %d", v->val.string.len), event_id);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * Checks a thin event's shape (a notification of an event destination, or
 * an event listed by GET /v2/core/events) and extracts the ledger's
 * columns: id, type, created (RFC 3339), livemode, context (the connected
 * account it names is the row's account) and the related object's type,
 * which with the type decides the outcome it is recorded with (pending,
 * ignored, or applied for a destination's ping: see sb_thin_action).
 * Nothing is fetched here.
 */
static void
parse_thin_event(Jsonb *event, EventHeader *header)
{
	JsonbContainer *root = &event->root;
	JsonbValue	buf;
	JsonbValue *v;
	char	   *context;

	header->thin = true;
	header->type = required_string(root, "type", "type", header->id);
	header->created = required_rfc3339(root, "created", "created", header->id);

	v = sb_jsonb_key(root, "livemode", &buf);
	if (v == NULL || v->type == jbvNull)
		malformed("livemode", "is missing", header->id);
	if (v->type != jbvBool)
		malformed("livemode", psprintf("must be a boolean, not %s", JsonbTypeName(v)), header->id);
	header->livemode = v->val.boolean;

	/* the context (Connect: the connected account), sent as Stripe-Context */
	context = optional_string(root, "context", "context", header->id);
	header->account = NULL;
	if (context)
	{
		if (!sb_is_context(context))
			malformed("context", "must be a Stripe context (letters, digits and \"_\", segments separated by \"/\", at most 255 bytes)",
					  header->id);
		header->account = sb_context_account(context);
	}

	/* the related object: checked for its types here, its url when fetched */
	header->kind = NULL;
	v = sb_jsonb_key(root, "related_object", &buf);
	if (v != NULL && v->type != jbvNull)
	{
		JsonbContainer *related;

		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			malformed("related_object", psprintf("must be an object, not %s", JsonbTypeName(v)),
					  header->id);
		related = v->val.binary.data;
		(void) optional_string(related, "id", "related_object.id", header->id);
		(void) optional_string(related, "url", "related_object.url", header->id);
		header->kind = optional_string(related, "type", "related_object.type", header->id);
	}
	header->api_version = NULL;
	header->thin_outcome = sb_thin_receive_outcome(header->type, header->kind);
}

/* Checks an event's shape and extracts the ledger's columns. */
static void
parse_event(Jsonb *event, EventHeader *header)
{
	JsonbContainer *root = &event->root;
	JsonbContainer *data;
	JsonbValue	buf;
	JsonbValue *v;

	if (!JB_ROOT_IS_OBJECT(event))
		ereport(ERROR,
				(errcode(ERRCODE_SB_MALFORMED_EVENT),
				 errmsg("malformed Stripe event: the event must be a JSON object")));

	header->snapshot = false;
	header->thin = false;
	header->thin_outcome = NULL;
	header->id = required_string(root, "id", "id", NULL);

	/* a thin event (event destinations): no object state, fetched later */
	v = sb_jsonb_key(root, "object", &buf);
	if (v != NULL && v->type == jbvString && v->val.string.len == 13 &&
		memcmp(v->val.string.val, "v2.core.event", 13) == 0)
	{
		parse_thin_event(event, header);
		return;
	}
	/* a bare API object passed by mistake is refused, not misread */
	if (v != NULL && !(v->type == jbvString && v->val.string.len == 5 &&
					   memcmp(v->val.string.val, "event", 5) == 0))
		malformed("object", "must be \"event\" (or \"v2.core.event\", a thin event)", header->id);

	header->type = required_string(root, "type", "type", header->id);
	header->created = required_unix_time(root, "created", "created", header->id);

	v = sb_jsonb_key(root, "livemode", &buf);
	if (v == NULL || v->type == jbvNull)
		malformed("livemode", "is missing", header->id);
	if (v->type != jbvBool)
		malformed("livemode", psprintf("must be a boolean, not %s", JsonbTypeName(v)),
				  header->id);
	header->livemode = v->val.boolean;

	/* a connected account's event (Connect) names its account */
	v = sb_jsonb_key(root, "account", &buf);
	header->account = NULL;
	if (v != NULL && v->type != jbvNull)
	{
		if (v->type != jbvString)
			malformed("account", psprintf("must be a string, not %s", JsonbTypeName(v)), header->id);
		header->account = pnstrdup(v->val.string.val, v->val.string.len);
		if (!sb_is_account_id(header->account))
			malformed("account", "must be a connected account's id (acct_ and letters or digits)",
					  header->id);
	}

	v = sb_jsonb_key(root, "api_version", &buf);
	header->api_version = NULL;
	if (v != NULL && v->type != jbvNull)
	{
		if (v->type != jbvString)
			malformed("api_version", psprintf("must be a string, not %s", JsonbTypeName(v)),
					  header->id);
		header->api_version = pnstrdup(v->val.string.val, v->val.string.len);
	}

	data = required_object(root, "data", "data", header->id);
	(void) required_object(data, "object", "data.object", header->id);
	parse_event_kind(event, header);
}

/* Is this event mapped onto billing tables (kinds.c)?  (A thin one never is here.) */
static bool
event_is_mapped(const EventHeader *header)
{
	return !header->thin && sb_event_type_is_mapped(header->type, header->kind);
}

/*
 * The outcome an event is recorded with: a thin event's (pending, ignored,
 * applied), else applied for a mapped one (set otherwise once mapped) and
 * ignored for the rest.
 */
static const char *
recorded_outcome(const EventHeader *header, bool mapped)
{
	if (header->thin)
		return header->thin_outcome;
	return mapped ? "applied" : "ignored";
}

/*
 * Errors that say nothing about the event, only about this moment (cancel,
 * deadlock, serialization failure, shutdown, out of memory, a node of a
 * Citus cluster unreachable, a bug): they abort the caller's transaction
 * instead of marking the event failed.  Program limits (class 54: an index
 * entry too big, nesting too deep) are not among them: the same event would
 * hit them again on every delivery.
 */
static bool
error_is_transient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:	/* 08: a remote node, e.g. Citus's */
		case ERRCODE_TRANSACTION_ROLLBACK:	/* 40: serialization, deadlock */
		case ERRCODE_INSUFFICIENT_RESOURCES:	/* 53 */
		case ERRCODE_OPERATOR_INTERVENTION: /* 57: cancel, shutdown */
		case ERRCODE_SYSTEM_ERROR:	/* 58 */
		case ERRCODE_INTERNAL_ERROR:	/* XX */
			return true;
	}
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/* The outcomes the mapping may report, as static strings. */
static const char *
canonical_outcome(const char *outcome)
{
	static const char *const outcomes[] = {"applied", "stale", "ignored"};

	for (int i = 0; i < lengthof(outcomes); i++)
		if (strcmp(outcome, outcomes[i]) == 0)
			return outcomes[i];
	elog(ERROR, "the mapping returned an unknown outcome \"%s\"", outcome);
	return NULL;				/* keep compiler quiet */
}

/*
 * The SQL function that maps each kind of object (kinds.c), in schema
 * stripe_billing: f(o jsonb, ev_type text, ev_id text, ev_created
 * timestamptz), or without ev_type.  Called through fmgr, not a SELECT: no
 * executor of our own around the mapping's own statements.  The function is
 * looked up, as a member of the extension (extension.c), on first use and
 * again after any pg_proc change (the extension may be recreated).
 */
typedef struct ObjectMapper
{
	bool		valid;			/* flinfo is looked up and current */
	bool		takes_account;	/* has the ev_account argument (0.4.0 on) */
	FmgrInfo	flinfo;
} ObjectMapper;

/* One for each of sb_object_kinds, in that order. */
static ObjectMapper mappers[SB_NUM_OBJECT_KINDS];

/*
 * Whether the extension's SQL fetches thin events (0.4.0 on): 1, 0, or -1
 * when not looked up yet.
 */
static int	thin_sql = -1;

/* A pg_proc change: look the mapping functions up again on next use. */
static void
invalidate_mappers(Datum arg, int cacheid, uint32 hashvalue)
{
	for (int i = 0; i < lengthof(mappers); i++)
		mappers[i].valid = false;
	thin_sql = -1;
}

/* Registers invalidate_mappers once. */
static void
register_mapper_callback(void)
{
	static bool callback_registered = false;

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, invalidate_mappers, (Datum) 0);
		callback_registered = true;
	}
}

/*
 * A thin event to fetch cannot be recorded under an older version's SQL
 * (0.3.0's ledger has no "pending", and nothing would fetch it), until
 * ALTER EXTENSION UPDATE: refused as a failure of the moment, so that the
 * route answers 500 and Stripe delivers it again.
 */
static void
check_thin_sql(const EventHeader *header)
{
	register_mapper_callback();
	if (thin_sql < 0)
		thin_sql = OidIsValid(sb_extension_function("_thin_fetch_one", 0, NULL, true)) ? 1 : 0;
	if (!thin_sql)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("thin event %s cannot be recorded before ALTER EXTENSION stripe_billing UPDATE",
						header->id)));
}

/* The mapper of a kind, its function looked up. */
static ObjectMapper *
get_mapper(const SbObjectKind *kind)
{
	ObjectMapper *mapper = &mappers[kind - sb_object_kinds];

	register_mapper_callback();
	if (!mapper->valid)
	{
		Oid			with_type[5] = {JSONBOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID};
		Oid			without_type[4] = {JSONBOID, TEXTOID, TIMESTAMPTZOID, TEXTOID};
		Oid		   *argtypes = kind->apply_takes_type ? with_type : without_type;
		int			nargs = kind->apply_takes_type ? 5 : 4;
		Oid			fn = sb_extension_function(kind->apply_function, nargs, argtypes, true);

		/* (the SQL of 0.3.0 and before, until ALTER EXTENSION UPDATE) */
		mapper->takes_account = OidIsValid(fn);
		if (!OidIsValid(fn))
			fn = sb_extension_function(kind->apply_function, nargs - 1, argtypes, false);
		fmgr_info_cxt(fn, &mapper->flinfo, TopMemoryContext);
		mapper->valid = true;
	}
	return mapper;
}

/*
 * Refuses an object that no event brought (a backfill's, a
 * reconciliation's, a re-fetch's, an API answer) of the other mode than
 * this database's, as check_livemode refuses such an event: a live
 * database given a test key must not import test objects.  An object
 * without livemode (one the extension builds) passes.
 */
static void
check_object_livemode(JsonbContainer *object, const EventHeader *header)
{
	JsonbValue	buf;
	JsonbValue *v = getKeyJsonValueFromContainer(object, "livemode", 8, &buf);
	JsonbValue	idbuf;
	JsonbValue *id;

	if (v == NULL || v->type != jbvBool || v->val.boolean == sb_livemode)
		return;
	id = getKeyJsonValueFromContainer(object, "id", 2, &idbuf);
	ereport(ERROR,
			(errcode(ERRCODE_SB_LIVEMODE_MISMATCH),
			 errmsg("Stripe %s %s is a %s object but this database accepts %s objects",
					header->kind,
					id && id->type == jbvString ?
					pnstrdup(id->val.string.val, Min(id->val.string.len, EVENT_KEY_MAX)) : "(no id)",
					v->val.boolean ? "live-mode" : "test-mode",
					sb_livemode ? "live-mode" : "test-mode"),
			 errhint("stripe_billing.livemode selects the mode; stripe_billing.api_key is a key of the other mode.")));
}

/*
 * A connected account an event or a call names gets its row in
 * stripe_billing.accounts the first time (its fields come with its own
 * events, or the backfill).
 */
static void
note_account(const char *account)
{
	static SPIPlanPtr plan = NULL;
	Datum		value = CStringGetTextDatum(account);

	if (plan == NULL)
	{
		Oid			type = TEXTOID;

		plan = SPI_prepare("INSERT INTO stripe_billing.accounts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
						   1, &type);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	if (SPI_execute_plan(plan, &value, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the connected account %s", account);
}

/* Runs the SQL mapping of one object: "applied", "stale" or "ignored". */
static const char *
map_object(Jsonb *object, const EventHeader *header)
{
	const SbObjectKind *kind;
	ObjectMapper *mapper;
	LOCAL_FCINFO(fcinfo, 5);
	int			nargs = 0;
	Datum		result;

	if (header->kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SB_INVALID_OBJECT),
				 errmsg("invalid Stripe object: field \"data.object.object\" is missing")));
	/* (an event's own livemode was checked before it was recorded) */
	if (header->snapshot)
		check_object_livemode(&object->root, header);
	kind = sb_object_kind(header->kind);
	if (kind == NULL)
		elog(ERROR, "no mapping for Stripe object kind \"%s\"", header->kind);
	sb_check_object_shape(&object->root, kind);
	mapper = get_mapper(kind);

	fcinfo->args[nargs++].value = JsonbPGetDatum(object);
	if (kind->apply_takes_type)
		fcinfo->args[nargs++].value = CStringGetTextDatum(header->type);
	fcinfo->args[nargs++].value = CStringGetTextDatum(header->id);
	fcinfo->args[nargs++].value = TimestampTzGetDatum(header->created);
	for (int i = 0; i < nargs; i++)
		fcinfo->args[i].isnull = false;
	if (mapper->takes_account)
	{
		fcinfo->args[nargs].value = header->account ? CStringGetTextDatum(header->account) : (Datum) 0;
		fcinfo->args[nargs++].isnull = header->account == NULL;
		if (header->account)
			note_account(header->account);
	}
	else if (header->account)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a connected account's %s cannot be applied before ALTER EXTENSION stripe_billing UPDATE",
						header->kind)));
	InitFunctionCallInfoData(*fcinfo, &mapper->flinfo, nargs, InvalidOid, NULL, NULL);

	result = FunctionCallInvoke(fcinfo);
	return fcinfo->isnull ? "applied" : canonical_outcome(TextDatumGetCString(result));
}

/* An event's data.object as a jsonb datum of its own (a copy). */
static Jsonb *
event_object_jsonb(Jsonb *event)
{
	JsonbValue	buf;
	JsonbValue *data = sb_jsonb_key(&event->root, "data", &buf);
	JsonbValue	object_buf;

	return JsonbValueToJsonb(sb_jsonb_key(data->val.binary.data, "object", &object_buf));
}

/*
 * Runs work(arg) inside a subtransaction.  Returns NULL when it succeeded;
 * when it failed on data, the subtransaction is rolled back and the error
 * returned (a caller's handler then sees a clean state).  Errors about the
 * moment, not the data, are re-thrown.
 */
static ErrorData *
run_guarded(void (*work) (void *arg), void *arg)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		work(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;

		if (error_is_transient(edata->sqlerrcode))
			ReThrowError(edata);
	}
	PG_END_TRY();

	return edata;
}

/* The mapping of one object, as run_guarded work. */
typedef struct MapWork
{
	Jsonb	   *object;
	const EventHeader *header;
	const char *outcome;
} MapWork;

static void
map_work(void *arg)
{
	MapWork    *w = (MapWork *) arg;

	w->outcome = map_object(w->object, w->header);
}

/*
 * Maps an object inside a subtransaction.  Returns the outcome; for "failed",
 * *error is the message (with its detail).  Transient errors are re-thrown.
 */
static const char *
map_object_guarded(Jsonb *object, const EventHeader *header, char **error)
{
	MapWork		w = {object, header, NULL};
	ErrorData  *edata = run_guarded(map_work, &w);

	*error = NULL;
	if (edata == NULL)
		return w.outcome;
	*error = edata->detail ? psprintf("%s (%s)", edata->message, edata->detail)
		: pstrdup(edata->message);
	FreeErrorData(edata);
	return "failed";
}

/* Sets an event's outcome and error in the ledger. */
static void
ledger_set_outcome(const char *id, const char *outcome, const char *error)
{
	static SPIPlanPtr plan = NULL;
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			rc;

	if (plan == NULL)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};

		plan = SPI_prepare("UPDATE stripe_billing.events SET outcome = $2, error = $3"
						   " WHERE id = $1", 3, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	values[0] = CStringGetTextDatum(id);
	values[1] = CStringGetTextDatum(outcome);
	if (error)
		values[2] = CStringGetTextDatum(error);
	else
		nulls[2] = 'n';
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "updating stripe_billing.events failed: %s", SPI_result_code_string(rc));
}

/*
 * Records the event in the ledger with the given outcome (and error): its
 * payload, or for a body jsonb refused (payload NULL) the raw body.  Returns
 * false when the id was already there (possibly after waiting for a
 * concurrent delivery of the same id to commit).
 */
static bool
ledger_insert(const EventHeader *header, const char *source, const char *outcome,
			  const char *error, Jsonb *event, bytea *body)
{
	/* (a connected account's event is recorded with its account; the other
	 * plan is the one 0.3.0's ledger, without the column, takes too) */
	static SPIPlanPtr plans[2] = {NULL, NULL};
	int			with_account = header->account != NULL;
	Datum		values[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	if (plans[with_account] == NULL)
	{
		Oid			types[11] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID,
		TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BYTEAOID, TEXTOID};

		plans[with_account] = SPI_prepare(with_account ?
										  "INSERT INTO stripe_billing.events"
										  " (id, type, api_version, livemode, created, source, outcome, error,"
										  "  payload, body, account)"
										  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
										  " ON CONFLICT (id) DO NOTHING" :
										  "INSERT INTO stripe_billing.events"
										  " (id, type, api_version, livemode, created, source, outcome, error,"
										  "  payload, body)"
										  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
										  " ON CONFLICT (id) DO NOTHING",
										  with_account ? 11 : 10, types);
		if (plans[with_account] == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plans[with_account]);
	}

	values[0] = CStringGetTextDatum(header->id);
	values[1] = CStringGetTextDatum(header->type);
	if (header->api_version)
		values[2] = CStringGetTextDatum(header->api_version);
	else
		nulls[2] = 'n';
	values[3] = BoolGetDatum(header->livemode);
	values[4] = TimestampTzGetDatum(header->created);
	values[5] = CStringGetTextDatum(source);
	values[6] = CStringGetTextDatum(outcome);
	if (error)
		values[7] = CStringGetTextDatum(error);
	else
		nulls[7] = 'n';
	if (event)
		values[8] = JsonbPGetDatum(event);
	else
		nulls[8] = 'n';
	if (body)
		values[9] = PointerGetDatum(body);
	else
		nulls[9] = 'n';
	if (with_account)
		values[10] = CStringGetTextDatum(header->account);

	rc = SPI_execute_plan(plans[with_account], values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "inserting into stripe_billing.events failed: %s",
			 SPI_result_code_string(rc));
	return SPI_processed == 1;
}

/* Refuses an event of the other mode than this database's. */
static void
check_livemode(const EventHeader *header)
{
	if (header->livemode != sb_livemode)
		ereport(ERROR,
				(errcode(ERRCODE_SB_LIVEMODE_MISMATCH),
				 errmsg("Stripe event %s is a %s event but this database accepts %s events",
						header->id,
						header->livemode ? "live-mode" : "test-mode",
						sb_livemode ? "live-mode" : "test-mode"),
				 errhint("stripe_billing.livemode selects the mode; an endpoint of the other mode is sending here.")));
}

/*
 * Notices: events that have no row of their own (an upcoming invoice, a
 * trial about to end; kinds.c's notice_types) are announced to the
 * application on the channel of feature changes by
 * stripe_billing._notify_event(event, account), once, when the event is
 * first recorded (not when delivered again, nor re-applied), after its
 * object was mapped.  The notification is a hint, sent at commit: one that
 * fails (it should not: the function reads the event defensively) is
 * rolled back alone with a WARNING, and the event stays recorded.
 */
static bool notifier_valid = false;
static bool notifier_exists = false;
static FmgrInfo notifier;

static void
invalidate_notifier(Datum arg, int cacheid, uint32 hashvalue)
{
	notifier_valid = false;
}

/* A notice to send, as run_guarded work. */
typedef struct NoticeWork
{
	Jsonb	   *event;
	const EventHeader *header;
} NoticeWork;

static void
notice_work(void *arg)
{
	NoticeWork *w = (NoticeWork *) arg;
	LOCAL_FCINFO(fcinfo, 2);

	InitFunctionCallInfoData(*fcinfo, &notifier, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = JsonbPGetDatum(w->event);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = w->header->account ? CStringGetTextDatum(w->header->account) : (Datum) 0;
	fcinfo->args[1].isnull = w->header->account == NULL;
	(void) FunctionCallInvoke(fcinfo);
}

/*
 * Announces a newly recorded event, when its type is a notice (see above);
 * nothing before ALTER EXTENSION UPDATE brings _notify_event.
 */
static void
notice_event(Jsonb *event, const EventHeader *header)
{
	static bool callback_registered = false;
	NoticeWork	w = {event, header};
	ErrorData  *edata;

	if (!sb_event_type_is_notice(header->type, header->kind))
		return;
	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, invalidate_notifier, (Datum) 0);
		callback_registered = true;
	}
	if (!notifier_valid)
	{
		Oid			argtypes[2] = {JSONBOID, TEXTOID};
		Oid			fn = sb_extension_function("_notify_event", 2, argtypes, true);

		notifier_exists = OidIsValid(fn);
		if (notifier_exists)
			fmgr_info_cxt(fn, &notifier, TopMemoryContext);
		notifier_valid = true;
	}
	if (!notifier_exists)
		return;
	edata = run_guarded(notice_work, &w);
	if (edata != NULL)
	{
		ereport(WARNING,
				(errmsg("stripe_billing: the notice of event %s (%s) was not sent: %s",
						header->id, header->type, edata->message)));
		FreeErrorData(edata);
	}
}

/* Takes the locks that mapping one object needs, in the global order (locks.c). */
static void
lock_objects(JsonbContainer *object, const char *kind, const char *account)
{
	SbLockSet  *set = sb_lockset_create();

	sb_lockset_add_object(set, object, kind, account);
	sb_lockset_acquire(set);
}

/*
 * Applies one event inside the caller's transaction and returns its outcome:
 * "applied", "stale" (an older snapshot than the rows hold), "ignored" (type
 * not mapped), "failed" (recorded with the error) or "duplicate" (id already
 * recorded: nothing changed).
 */
const char *
sb_apply_event(Jsonb *event, const char *source)
{
	EventHeader header;
	const char *outcome;
	bool		mapped;

	if (source == NULL || source[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event source must not be empty")));

	parse_event(event, &header);
	check_livemode(&header);
	mapped = event_is_mapped(&header);
	if (header.thin && strcmp(header.thin_outcome, "pending") == 0)
		check_thin_sql(&header);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* record first, as applied: the common case then costs one insert */
	if (!ledger_insert(&header, source, recorded_outcome(&header, mapped), NULL, event, NULL))
		outcome = "duplicate";
	else if (!mapped)
	{
		/* (a thin event is only recorded: the worker fetches it, thin.c) */
		outcome = recorded_outcome(&header, mapped);
		if (header.thin && strcmp(outcome, "pending") == 0)
			sb_thin_note_pending();
	}
	else
	{
		char	   *error;

		lock_objects(event_object(event), header.kind, header.account);
		outcome = map_object_guarded(event_object_jsonb(event), &header, &error);
		if (strcmp(outcome, "applied") != 0)
			ledger_set_outcome(header.id, outcome, error);
	}
	if (strcmp(outcome, "duplicate") != 0)
		notice_event(event, &header);

	SPI_finish();
	return outcome;
}

/*
 * Applies recorded events again (failed ones, or ignored ones whose type is
 * now mapped), in the order given, each in a subtransaction of its own, and
 * records each one's new outcome (and error) in the ledger and in
 * outcomes[] and errors[].  The locks of them all are taken first
 * (locks.c); the caller has locked their ledger rows.
 */
static void
reapply_events(Datum *ids, bool *nulls, int n, EventHeader *headers,
			   const char **outcomes, char **errors)
{
	Jsonb	  **events = palloc0(sizeof(Jsonb *) * Max(n, 1));
	bool	   *mapped = palloc0(sizeof(bool) * Max(n, 1));
	SbLockSet  *set = sb_lockset_create();
	SPIPlanPtr	plan;
	Oid			argtype = TEXTOID;

	plan = SPI_prepare("SELECT payload FROM stripe_billing.events WHERE id = $1", 1, &argtype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	for (int i = 0; i < n; i++)
	{
		char	   *id;
		Datum		payload;
		bool		isnull;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("ids[%d] must not be NULL", i + 1)));
		id = TextDatumGetCString(ids[i]);
		if (SPI_execute_plan(plan, &ids[i], NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading stripe_billing.events failed");
		if (SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("Stripe event %s is not in the ledger", id)));
		payload = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("Stripe event %s cannot be applied again: its body is not valid jsonb", id),
					 errdetail("Only its raw body is kept, in column \"body\" of stripe_billing.events.")));
		/* (a copy: the next read frees SPI's tuple table) */
		events[i] = DatumGetJsonbPCopy(payload);
		parse_event(events[i], &headers[i]);
		mapped[i] = event_is_mapped(&headers[i]);
		if (mapped[i])
			sb_lockset_add_object(set, event_object(events[i]), headers[i].kind, headers[i].account);
	}
	SPI_freeplan(plan);
	sb_lockset_acquire(set);

	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		errors[i] = NULL;
		/* a thin event is fetched again (pending), unless its type is not mapped */
		if (headers[i].thin)
		{
			outcomes[i] = headers[i].thin_outcome;
			if (strcmp(outcomes[i], "pending") == 0)
				sb_thin_note_pending();
		}
		else
			outcomes[i] = mapped[i] ?
				map_object_guarded(event_object_jsonb(events[i]), &headers[i], &errors[i]) : "ignored";
		ledger_set_outcome(headers[i].id, outcomes[i], errors[i]);
	}
}

/*
 * stripe_billing._reapply_events(ids text[])
 *   -> (event_id, event_type, outcome, error)
 *
 * See reapply_events.
 */
Datum
stripe_reapply_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *ids;
	bool	   *nulls;
	int			n;
	EventHeader *headers;
	const char **outcomes;
	char	  **errors;

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), TEXTOID, -1, false, TYPALIGN_INT, &ids, &nulls, &n);
	headers = palloc0(sizeof(EventHeader) * Max(n, 1));
	outcomes = palloc0(sizeof(char *) * Max(n, 1));
	errors = palloc0(sizeof(char *) * Max(n, 1));
	InitMaterializedSRF(fcinfo, 0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	reapply_events(ids, nulls, n, headers, outcomes, errors);
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		isnull[4] = {false, false, false, errors[i] == NULL};

		values[0] = CStringGetTextDatum(headers[i].id);
		values[1] = CStringGetTextDatum(headers[i].type);
		values[2] = CStringGetTextDatum(outcomes[i]);
		values[3] = errors[i] ? CStringGetTextDatum(errors[i]) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * stripe_billing._reapply_event(id text) -> outcome: 0.3.0's SQL calls it
 * (its retries), until ALTER EXTENSION UPDATE.
 */
Datum
stripe_reapply_event(PG_FUNCTION_ARGS)
{
	Datum		id = PG_GETARG_DATUM(0);
	bool		isnull = false;
	EventHeader header;
	const char *outcome;
	char	   *error;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	reapply_events(&id, &isnull, 1, &header, &outcome, &error);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(outcome));
}

/* stripe_apply_event(event jsonb, source text) -> outcome */
Datum
stripe_apply_event(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event must not be NULL")));
	PG_RETURN_TEXT_P(cstring_to_text(sb_apply_event(PG_GETARG_JSONB_P(0),
													PG_ARGISNULL(1) ? NULL :
													text_to_cstring(PG_GETARG_TEXT_PP(1)))));
}

/*
 * While a batch is mapped, the customers whose users' features it derives
 * at its end, all in one statement, instead of one derivation per object
 * (see stripe_derivation_deferred).
 */
static bool deferring = false;
static List *deferred_customers = NIL;
static MemoryContext deferred_context = NULL;

/* Derives the features of the users of the customers the batch noted. */
static void
derive_deferred(const char *ev_type)
{
	int			n = list_length(deferred_customers);
	Datum	   *elems;
	Oid			argtypes[2] = {TEXTARRAYOID, TEXTOID};
	Datum		values[2];
	ListCell   *lc;
	int			i = 0;

	if (n == 0)
		return;
	elems = palloc(sizeof(Datum) * n);
	foreach(lc, deferred_customers)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	values[0] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = CStringGetTextDatum(ev_type);
	if (SPI_execute_with_args("SELECT stripe_billing._refresh_customers_features($1, $2)",
							  2, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not derive the features of a batch's users");
}

/*
 * Applying many events in one call: a worker's page, or stripe_apply_events.
 * The events are recorded first, in id order, then the locks of every event
 * to map are taken at once (locks.c: two batches, or a batch and a webhook,
 * delivering the same events never wait for each other in opposite orders),
 * then the events are mapped in their order.
 *
 * A subtransaction per event would be simplest, but past 64 in one
 * transaction PostgreSQL's per-backend subtransaction cache overflows, and
 * while that transaction runs every snapshot in the cluster falls back to
 * pg_subtrans lookups; committing thousands of them in one transaction also
 * costs more per event the more there are.  So one subtransaction maps a
 * run of events.  When an event fails on data, the run is rolled back, the
 * events before it are mapped again as a run of their own, and the failing
 * one alone is marked "failed"; the next run starts after it.  A batch
 * without failures takes one subtransaction whatever its size, and each
 * failure adds one (the rolled-back ones leave no trace in the cache).
 */
typedef struct EventBatch
{
	int			n;
	Jsonb	  **events;
	EventHeader *headers;
	bool	   *mapped;			/* of a mapped type */
	bool	   *skipped;		/* malformed, skipped with a WARNING */
	bool	   *to_map;			/* recorded by this batch, and mapped */
	const char **outcomes;
	const char *source;
	int			first;			/* the run: events first .. last - 1 */
	int			last;
	int			at;				/* the event being worked on */
	bool		defer;			/* derive features at the run's end */
	MemoryContext event_context;	/* reset after each event */
} EventBatch;

/* Maps a recorded event, in the current (sub)transaction. */
static const char *
map_recorded(Jsonb *event, const EventHeader *header)
{
	const char *outcome = map_object(event_object_jsonb(event), header);

	if (strcmp(outcome, "applied") != 0)
		ledger_set_outcome(header->id, outcome, NULL);
	return outcome;
}

/*
 * Maps the run's events in order, as run_guarded work.  When b->defer,
 * the users' features are derived once, at the run's end, for every
 * customer the run touched (see stripe_derivation_deferred): rewriting a
 * user's features at each of their events would leave, inside one
 * transaction, a dead version per event for the next derivation to step
 * over.  The notification then names the run's last event type.
 */
static void
apply_run_work(void *arg)
{
	EventBatch *b = (EventBatch *) arg;
	MemoryContext oldcontext = CurrentMemoryContext;
	const char *last_type = NULL;

	deferred_customers = NIL;
	deferred_context = oldcontext;
	deferring = b->defer;
	PG_TRY();
	{
		for (b->at = b->first; b->at < b->last; b->at++)
		{
			CHECK_FOR_INTERRUPTS();
			if (!b->to_map[b->at])
				continue;
			MemoryContextSwitchTo(b->event_context);
			b->outcomes[b->at] = map_recorded(b->events[b->at], &b->headers[b->at]);
			MemoryContextSwitchTo(oldcontext);
			MemoryContextReset(b->event_context);
			last_type = b->headers[b->at].type;
		}
		/* (b->at is b->last here: a failure now is the derivation's) */
		deferring = false;
		if (b->defer && last_type != NULL)
			derive_deferred(last_type);
	}
	PG_FINALLY();
	{
		/* (never left on: every later derivation would be lost) */
		deferring = false;
		deferred_customers = NIL;
	}
	PG_END_TRY();
}

/* Parses the headers from b->at on, as run_guarded work (it writes nothing). */
static void
parse_batch_work(void *arg)
{
	EventBatch *b = (EventBatch *) arg;

	for (; b->at < b->n; b->at++)
	{
		if (b->skipped[b->at])
			continue;
		parse_event(b->events[b->at], &b->headers[b->at]);
		check_livemode(&b->headers[b->at]);
		b->mapped[b->at] = event_is_mapped(&b->headers[b->at]);
		if (b->headers[b->at].thin && strcmp(b->headers[b->at].thin_outcome, "pending") == 0)
			check_thin_sql(&b->headers[b->at]);
	}
}

/*
 * Parses every event's header first.  A malformed event (no usable id)
 * raises, unless skip_malformed: then it is skipped with a WARNING, as a
 * polled page must not stall on it.  The subtransactions here write
 * nothing, so they take no transaction id and do not count in the cache.
 */
static void
parse_batch(EventBatch *b, bool skip_malformed)
{
	b->at = 0;
	while (b->at < b->n)
	{
		ErrorData  *edata;

		if (!skip_malformed)
		{
			parse_batch_work(b);
			break;
		}
		edata = run_guarded(parse_batch_work, b);
		if (edata == NULL)
			break;
		if (edata->sqlerrcode != ERRCODE_SB_MALFORMED_EVENT)
			ReThrowError(edata);
		ereport(WARNING,
				(errmsg("stripe_billing: a polled event was skipped: %s", edata->message),
				 errdetail("Its id: %s.", b->headers[b->at].id ? b->headers[b->at].id : "(none)")));
		FreeErrorData(edata);
		b->skipped[b->at] = true;
		b->outcomes[b->at] = NULL;
		b->at++;
	}
}

/* Event ids in order (qsort), the earlier in the batch first among repeats. */
static const EventBatch *sorting_batch;

static int
id_order(const void *a, const void *b)
{
	int			i = *(const int *) a;
	int			j = *(const int *) b;
	int			c = strcmp(sorting_batch->headers[i].id, sorting_batch->headers[j].id);

	return c != 0 ? c : (i < j ? -1 : i > j ? 1 : 0);
}

/*
 * Records b's events in the ledger in id order (level 0 of locks.c: a
 * delivery of the same id elsewhere is waited for here, before any other
 * lock is held), then takes the locks of every event to map at once.
 */
static void
record_batch(EventBatch *b)
{
	int		   *order = palloc(sizeof(int) * Max(b->n, 1));
	int			n = 0;
	SbLockSet  *set = sb_lockset_create();

	for (int i = 0; i < b->n; i++)
		if (!b->skipped[i])
			order[n++] = i;
	sorting_batch = b;
	qsort(order, n, sizeof(int), id_order);
	for (int k = 0; k < n; k++)
	{
		int			i = order[k];

		CHECK_FOR_INTERRUPTS();
		if (!ledger_insert(&b->headers[i], b->source, recorded_outcome(&b->headers[i], b->mapped[i]),
						   NULL, b->events[i], NULL))
			b->outcomes[i] = "duplicate";
		else if (!b->mapped[i])
		{
			b->outcomes[i] = recorded_outcome(&b->headers[i], false);
			if (b->headers[i].thin && strcmp(b->outcomes[i], "pending") == 0)
				sb_thin_note_pending();
		}
		else
		{
			b->to_map[i] = true;
			sb_lockset_add_object(set, event_object(b->events[i]), b->headers[i].kind,
								  b->headers[i].account);
		}
	}
	sb_lockset_acquire(set);
	pfree(order);
}

/* Maps b's recorded events in order, with as few subtransactions as failures allow. */
static void
apply_batch(EventBatch *b)
{
	int			first = 0;
	int			last = b->n;
	int			failing = -1;

	b->event_context = AllocSetContextCreate(CurrentMemoryContext, "stripe_billing event",
											 ALLOCSET_DEFAULT_SIZES);
	while (first < b->n)
	{
		ErrorData  *edata;

		if (first == failing)
		{
			/* the failing event (marked failed already) */
			first++;
			last = b->n;
			continue;
		}
		b->first = first;
		b->last = last;
		edata = run_guarded(apply_run_work, b);
		MemoryContextReset(b->event_context);
		if (edata == NULL)
		{
			first = last;
			last = b->n;
			continue;
		}
		if (b->at == last)
		{
			/* the run's derivation failed: run it again deriving per event */
			Assert(b->defer);
			FreeErrorData(edata);
			b->defer = false;
			continue;
		}
		/* rolled back: the ones before the failing one become a run again */
		failing = b->at;
		b->outcomes[failing] = "failed";
		ledger_set_outcome(b->headers[failing].id, "failed",
						   edata->detail ? psprintf("%s (%s)", edata->message, edata->detail)
						   : edata->message);
		FreeErrorData(edata);
		last = failing;
	}
	MemoryContextDelete(b->event_context);
}

/* Parses b's events, records them, then maps them (see the functions above). */
static void
run_batch(EventBatch *b, bool skip_malformed)
{
	parse_batch(b, skip_malformed);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	record_batch(b);
	apply_batch(b);
	/* the notices of the events this batch recorded, in its order */
	for (int i = 0; i < b->n; i++)
		if (!b->skipped[i] && strcmp(b->outcomes[i], "duplicate") != 0)
			notice_event(b->events[i], &b->headers[i]);
	SPI_finish();
}

/* An EventBatch of n events, none parsed yet. */
static void
init_batch(EventBatch *b, int n, const char *source)
{
	if (source == NULL || source[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event source must not be empty")));
	b->n = n;
	b->events = palloc0(sizeof(Jsonb *) * Max(n, 1));
	b->headers = palloc0(sizeof(EventHeader) * Max(n, 1));
	b->mapped = palloc0(sizeof(bool) * Max(n, 1));
	b->skipped = palloc0(sizeof(bool) * Max(n, 1));
	b->to_map = palloc0(sizeof(bool) * Max(n, 1));
	b->outcomes = palloc0(sizeof(char *) * Max(n, 1));
	b->source = source;
	b->defer = true;
}

/*
 * stripe_apply_events(events jsonb[], source text) -> (event_id, outcome)
 *
 * Applies the events in array order, each as stripe_apply_event would,
 * with one subtransaction for the lot plus one per failing event.
 */
Datum
stripe_apply_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *array;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	EventBatch	b;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be NULL")));
	array = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("events must be a one-dimensional array")));
	deconstruct_array(array, JSONBOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	init_batch(&b, n, PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("events[%d] must not be NULL", i + 1)));
		b.events[i] = DatumGetJsonbP(elems[i]);
	}

	InitMaterializedSRF(fcinfo, 0);
	run_batch(&b, false);

	for (int i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		isnull[2] = {false, false};

		values[0] = CStringGetTextDatum(b.headers[i].id);
		values[1] = CStringGetTextDatum(b.outcomes[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	return (Datum) 0;
}

/*
 * stripe_billing._apply_page(page jsonb, source text) -> integer
 *
 * Applies a list page of events (newest first, as /v1/events lists them)
 * oldest first; a malformed event is skipped with a WARNING.  Returns how
 * many were not skipped.
 */
Datum
stripe_apply_page(PG_FUNCTION_ARGS)
{
	Jsonb	   *page = PG_GETARG_JSONB_P(0);
	EventBatch	b;
	int			n;
	int			kept = 0;

	if (!JB_ROOT_IS_ARRAY(page) || JB_ROOT_IS_SCALAR(page))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a page of events must be a jsonb array")));
	n = JB_ROOT_COUNT(page);
	init_batch(&b, n, text_to_cstring(PG_GETARG_TEXT_PP(1)));
	for (int i = 0; i < n; i++)
		b.events[n - 1 - i] = JsonbValueToJsonb(getIthJsonbValueFromContainer(&page->root, i));

	run_batch(&b, true);

	for (int i = 0; i < n; i++)
		kept += b.skipped[i] ? 0 : 1;
	PG_RETURN_INT32(kept);
}

/* The parse of a verified body, as run_guarded work. */
typedef struct ParseWork
{
	char	   *json;
	int			len;
	bool		convert;
	Jsonb	   *event;
} ParseWork;

static void
parse_work(void *arg)
{
	ParseWork  *w = (ParseWork *) arg;
	char	   *server_json;

	/* the reason kept must not carry the caller's context lines */
	error_context_stack = NULL;
	server_json = w->convert ? pg_any_to_server(w->json, w->len, PG_UTF8) : w->json;
	w->event = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(server_json)));
}

/*
 * Parses a verified body as jsonb (converted from UTF-8 first when convert)
 * inside a subtransaction.  Returns NULL when jsonb refuses it, with the
 * reason in *reason; errors about the moment, not the body, are re-thrown.
 */
static Jsonb *
parse_body_guarded(char *json, int len, bool convert, char **reason)
{
	ParseWork	w = {json, len, convert, NULL};
	ErrorData  *edata = run_guarded(parse_work, &w);

	if (edata == NULL)
		return w.event;
	*reason = psprintf("the body is not valid jsonb: %s%s%s%s%s%s",
					   edata->message,
					   edata->detail ? " (" : "", edata->detail ? edata->detail : "",
					   edata->detail ? ")" : "",
					   edata->context ? ", at " : "", edata->context ? edata->context : "");
	FreeErrorData(edata);
	return NULL;
}

/*
 * A copy of a UTF-8 body fit for the header scan of a body jsonb refused:
 * each byte that is not valid UTF-8 (or, when ascii_only, not ASCII)
 * becomes '?', so offsets are kept.  Only the header is read from it.
 */
static char *
sanitized_copy(const char *body, int len, bool ascii_only)
{
	char	   *copy = palloc(len + 1);
	int			i = 0;

	memcpy(copy, body, len);
	copy[len] = '\0';
	while (i < len)
	{
		if (ascii_only)
		{
			if (IS_HIGHBIT_SET(copy[i]) || copy[i] == '\0')
				copy[i] = '?';
			i++;
			continue;
		}
		i += pg_encoding_verifymbstr(PG_UTF8, copy + i, len - i);
		if (i < len)
			copy[i++] = '?';
	}
	return copy;
}

/* A token of the header scan: a top-level field's value. */
typedef struct BodyToken
{
	JsonTokenType type;			/* JSON_TOKEN_INVALID: the field is absent */
	int			start;			/* offset and length in the body */
	int			len;
} BodyToken;

/* The header fields of a body, as the scan found them (the last of each). */
typedef struct BodyHeader
{
	bool		is_object;		/* the body is a JSON object */
	BodyToken	id;
	BodyToken	object;
	BodyToken	type;
	BodyToken	created;
	BodyToken	livemode;
	BodyToken	api_version;
	BodyToken	account;
	BodyToken	data;
	JsonTokenType data_object;	/* the first token of data.object, or INVALID */
} BodyHeader;

/* The header fields the scan keeps, by name. */
static BodyToken *
header_field(BodyHeader *bh, const char *name)
{
	static const char *const names[] = {"id", "object", "type", "created", "livemode",
	"api_version", "account", "data"};
	BodyToken  *fields[] = {&bh->id, &bh->object, &bh->type, &bh->created, &bh->livemode,
	&bh->api_version, &bh->account, &bh->data};

	for (int i = 0; i < lengthof(names); i++)
		if (strcmp(name, names[i]) == 0)
			return fields[i];
	return NULL;
}

/*
 * The text of a string token, its escapes decoded as jsonb would; NULL with
 * *problem when they cannot be (a \u0000, a lone surrogate).
 */
static char *
decode_string(const char *token, int len, char **problem)
{
	JsonLexContext *lex = sb_json_lexer(token, len, true);
	JsonParseErrorType err = json_lex(lex);

	if (err != JSON_SUCCESS)
	{
		*problem = json_errdetail(err, lex);
		return NULL;
	}
	return lex->strval->data;
}

/*
 * Scans the text of a body jsonb refused, as JSON, without building it
 * (and without recursion: any depth is fine), for the header fields at its
 * top level and the kind of data.object.  Returns NULL, or why the text is
 * not JSON.  Unicode escapes are not decoded, so \u0000 and lone surrogates
 * pass (they are valid JSON); numbers are not converted.
 */
static char *
scan_body_header(char *json, int len, BodyHeader *bh)
{
	JsonLexContext *lex = sb_json_lexer(json, len, false);
	enum
	{
		S_VALUE,				/* a value is expected */
		S_FIRST_ELEMENT,		/* after '[': a value or ']' */
		S_FIRST_KEY,			/* after '{': a key or '}' */
		S_KEY,					/* after ',' in an object: a key */
		S_COLON,				/* after a key */
		S_NEXT					/* after a value: ',', the closer, or the end */
	}			state = S_VALUE;
	char	   *stack = palloc(64);	/* '{' or '[' per open container */
	int			stack_size = 64;
	int			depth = 0;
	int			data_depth = 0; /* depth of the root's data object, if open */
	BodyToken  *field = NULL;	/* the root's field whose value is next */
	bool		data_object_next = false;	/* the next value is data.object */

	memset(bh, 0, sizeof(BodyHeader));
	for (;;)
	{
		JsonParseErrorType err = json_lex(lex);
		JsonTokenType tok = lex->token_type;
		char		top = depth > 0 ? stack[depth - 1] : '\0';

		if (err != JSON_SUCCESS)
			return json_errdetail(err, lex);

		switch (state)
		{
			case S_FIRST_ELEMENT:
				if (tok == JSON_TOKEN_ARRAY_END)
				{
					depth--;	/* (an array is never the data object) */
					state = S_NEXT;
					break;
				}
				/* FALLTHROUGH */
			case S_VALUE:
				if (depth == 0)
					bh->is_object = tok == JSON_TOKEN_OBJECT_START;
				if (field)
				{
					field->type = tok;
					field->start = lex->token_start - json;
					field->len = lex->token_terminator - lex->token_start;
				}
				if (data_object_next)
					bh->data_object = tok;
				if (tok == JSON_TOKEN_OBJECT_START || tok == JSON_TOKEN_ARRAY_START)
				{
					if (depth == stack_size)
					{
						stack_size *= 2;
						stack = repalloc(stack, stack_size);
					}
					if (field == &bh->data && tok == JSON_TOKEN_OBJECT_START)
						data_depth = depth + 1;
					stack[depth++] = tok == JSON_TOKEN_OBJECT_START ? '{' : '[';
					state = tok == JSON_TOKEN_OBJECT_START ? S_FIRST_KEY : S_FIRST_ELEMENT;
				}
				else if (tok == JSON_TOKEN_STRING || tok == JSON_TOKEN_NUMBER ||
						 tok == JSON_TOKEN_TRUE || tok == JSON_TOKEN_FALSE ||
						 tok == JSON_TOKEN_NULL)
					state = S_NEXT;
				else
					return json_errdetail(tok == JSON_TOKEN_END ? JSON_EXPECTED_MORE :
										  state == S_VALUE ? JSON_EXPECTED_JSON :
										  JSON_EXPECTED_ARRAY_FIRST, lex);
				field = NULL;
				data_object_next = false;
				break;

			case S_FIRST_KEY:
				if (tok == JSON_TOKEN_OBJECT_END)
				{
					if (depth == data_depth)
						data_depth = 0;
					depth--;
					state = S_NEXT;
					break;
				}
				/* FALLTHROUGH */
			case S_KEY:
				if (tok != JSON_TOKEN_STRING)
					return json_errdetail(tok == JSON_TOKEN_END ? JSON_EXPECTED_MORE :
										  state == S_KEY ? JSON_EXPECTED_STRING :
										  JSON_EXPECTED_OBJECT_FIRST, lex);
				if (depth == 1 || (depth == 2 && data_depth == 2))
				{
					char	   *problem;
					char	   *key = decode_string(lex->token_start,
													lex->token_terminator - lex->token_start,
													&problem);

					if (key && depth == 1)
					{
						field = header_field(bh, key);
						/* a repeated "data" replaces the first: jsonb keeps the last */
						if (field == &bh->data)
							bh->data_object = JSON_TOKEN_INVALID;
					}
					else if (key)
						data_object_next = strcmp(key, "object") == 0;
				}
				state = S_COLON;
				break;

			case S_COLON:
				if (tok != JSON_TOKEN_COLON)
					return json_errdetail(tok == JSON_TOKEN_END ? JSON_EXPECTED_MORE :
										  JSON_EXPECTED_COLON, lex);
				state = S_VALUE;
				break;

			case S_NEXT:
				if (depth == 0)
				{
					if (tok != JSON_TOKEN_END)
						return json_errdetail(JSON_EXPECTED_END, lex);
					return NULL;
				}
				if (tok == JSON_TOKEN_COMMA)
					state = top == '{' ? S_KEY : S_VALUE;
				else if (tok == (top == '{' ? JSON_TOKEN_OBJECT_END : JSON_TOKEN_ARRAY_END))
				{
					if (depth == data_depth)
						data_depth = 0;
					depth--;
				}
				else
					return json_errdetail(tok == JSON_TOKEN_END ? JSON_EXPECTED_MORE :
										  top == '{' ? JSON_EXPECTED_OBJECT_NEXT :
										  JSON_EXPECTED_ARRAY_NEXT, lex);
				break;
		}
	}
}

/* Pushes a value of a token's type (true and false as they are). */
static void
push_placeholder(JsonbParseState **state, JsonTokenType type)
{
	JsonbValue	v;

	switch (type)
	{
		case JSON_TOKEN_OBJECT_START:
			pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
			pushJsonbValue(state, WJB_END_OBJECT, NULL);
			return;
		case JSON_TOKEN_ARRAY_START:
			pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
			pushJsonbValue(state, WJB_END_ARRAY, NULL);
			return;
		case JSON_TOKEN_STRING:
			v.type = jbvString;
			v.val.string.val = "";
			v.val.string.len = 0;
			break;
		case JSON_TOKEN_NUMBER:
			v.type = jbvNumeric;
			v.val.numeric = int64_to_numeric(0);
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			v.type = jbvBool;
			v.val.boolean = type == JSON_TOKEN_TRUE;
			break;
		default:
			v.type = jbvNull;
			break;
	}
	pushJsonbValue(state, WJB_VALUE, &v);
}

/* Can numeric_in read this JSON number without raising (exponent, size)? */
static bool
number_is_readable(const char *number)
{
	const char *e = strpbrk(number, "eE");

	return strlen(number) <= 100 && (e == NULL || labs(strtol(e + 1, NULL, 10)) <= 1000);
}

/*
 * Adds a scanned header field to the header object being built, as the
 * value parse_event then checks: strings decoded, the created time as its
 * number, other values as placeholders of their type (only their type
 * matters), data as {"object": <a placeholder of data.object's type>}.  A
 * string that cannot be decoded, or that the sanitized copy altered, is
 * refused here.
 */
static void
push_header_field(JsonbParseState **state, const char *name, const BodyToken *token,
				  char *scan, const char *body, const BodyHeader *bh)
{
	JsonbValue	v;

	if (token->type == JSON_TOKEN_INVALID)
		return;
	v.type = jbvString;
	v.val.string.val = unconstify(char *, name);
	v.val.string.len = strlen(name);
	pushJsonbValue(state, WJB_KEY, &v);

	if (token->type == JSON_TOKEN_STRING)
	{
		char	   *problem;
		char	   *s = decode_string(scan + token->start, token->len, &problem);

		if (s == NULL)
			malformed(name, psprintf("cannot be read: %s", problem), NULL);
		if (memcmp(scan + token->start, body + token->start, token->len) != 0)
			malformed(name, "is not valid UTF-8", NULL);
		v.type = jbvString;
		v.val.string.val = s;
		v.val.string.len = strlen(s);
		pushJsonbValue(state, WJB_VALUE, &v);
	}
	else if (token->type == JSON_TOKEN_NUMBER && strcmp(name, "created") == 0)
	{
		char	   *number = pnstrdup(scan + token->start, token->len);

		if (!number_is_readable(number))
			malformed(name, psprintf("must be a Unix time in whole seconds, not %s", number),
					  NULL);
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
															CStringGetDatum(number),
															ObjectIdGetDatum(InvalidOid),
															Int32GetDatum(-1)));
		pushJsonbValue(state, WJB_VALUE, &v);
	}
	else if (token == &bh->data && token->type == JSON_TOKEN_OBJECT_START)
	{
		pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
		if (bh->data_object != JSON_TOKEN_INVALID)
		{
			v.type = jbvString;
			v.val.string.val = "object";
			v.val.string.len = 6;
			pushJsonbValue(state, WJB_KEY, &v);
			push_placeholder(state, bh->data_object);
		}
		pushJsonbValue(state, WJB_END_OBJECT, NULL);
	}
	else
		push_placeholder(state, token->type);
}

/*
 * Records a verified body that jsonb refused (reason says why) as a failed
 * event with its raw bytes, its header read from scan_text: the body itself,
 * or a sanitized copy of it of the same length.  A body without a usable
 * header is refused as a malformed event, as the jsonb path would.
 */
static const char *
record_unparsed_body(bytea *raw, char *scan_text, const char *reason, const char *source,
					 char **id)
{
	const char *body = VARDATA_ANY(raw);
	int			len = VARSIZE_ANY_EXHDR(raw);
	BodyHeader	bh;
	char	   *not_json = scan_body_header(scan_text, len, &bh);
	JsonbParseState *state = NULL;
	JsonbValue *root;
	EventHeader header;
	bool		inserted;

	if (not_json)
		ereport(ERROR,
				(errcode(ERRCODE_SB_MALFORMED_EVENT),
				 errmsg("malformed Stripe event: the body is not JSON: %s", not_json)));
	if (!bh.is_object)
		ereport(ERROR,
				(errcode(ERRCODE_SB_MALFORMED_EVENT),
				 errmsg("malformed Stripe event: the event must be a JSON object")));

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_header_field(&state, "id", &bh.id, scan_text, body, &bh);
	push_header_field(&state, "object", &bh.object, scan_text, body, &bh);
	push_header_field(&state, "type", &bh.type, scan_text, body, &bh);
	push_header_field(&state, "created", &bh.created, scan_text, body, &bh);
	push_header_field(&state, "livemode", &bh.livemode, scan_text, body, &bh);
	push_header_field(&state, "api_version", &bh.api_version, scan_text, body, &bh);
	push_header_field(&state, "account", &bh.account, scan_text, body, &bh);
	push_header_field(&state, "data", &bh.data, scan_text, body, &bh);
	root = pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	/* the same checks as for any event, on the header alone */
	parse_event(JsonbValueToJsonb(root), &header);
	check_livemode(&header);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	inserted = ledger_insert(&header, source, "failed", reason, NULL, raw);
	SPI_finish();
	if (id)
		*id = header.id;
	return inserted ? "failed" : "duplicate";
}

/*
 * Verifies a webhook against stripe_billing.webhook_secret, parses the
 * payload and applies it with source "webhook".  The payload is the raw body
 * in bytes; is_text says it is already in the database encoding, otherwise
 * it is UTF-8, as Stripe sends it.  A verified body jsonb refuses is kept
 * as a failed event (record_unparsed_body).
 */
static const char *
handle_webhook(bytea *payload, text *header, bool is_text)
{
	const char *body = payload ? VARDATA_ANY(payload) : NULL;
	size_t		body_len = payload ? VARSIZE_ANY_EXHDR(payload) : 0;
	char	  **secrets;
	size_t	   *secret_lens;
	int			nsecrets;
	char	   *json;
	char	   *reason = NULL;
	int			db_encoding = GetDatabaseEncoding();
	bool		utf8_db = db_encoding == PG_UTF8 || db_encoding == PG_SQL_ASCII;
	Jsonb	   *event;

	nsecrets = sb_split_secret_list(sb_webhook_secret, &secrets, &secret_lens);
	sb_check_signature(body, body_len,
					   header ? VARDATA_ANY(header) : NULL,
					   header ? VARSIZE_ANY_EXHDR(header) : 0,
					   (const char *const *) secrets, secret_lens, nsecrets,
					   sb_webhook_tolerance,
					   timestamptz_to_time_t(GetCurrentTimestamp()));

	/* verified: from here on, a body with a usable id is not lost */
	json = palloc(body_len + 1);
	memcpy(json, body, body_len);
	json[body_len] = '\0';
	if (!is_text)
	{
		int			valid = pg_encoding_verifymbstr(PG_UTF8, json, body_len);

		if (valid < body_len)
		{
			StringInfoData bytes;
			int			n = Min(pg_encoding_mblen(PG_UTF8, json + valid), body_len - valid);

			initStringInfo(&bytes);
			for (int i = 0; i < n; i++)
				appendStringInfo(&bytes, "%s0x%02x", i ? " " : "",
								 (unsigned char) json[valid + i]);
			reason = psprintf("the body is not valid UTF-8: invalid byte sequence %s at byte %d",
							  bytes.data, valid);
		}
	}
	if (reason == NULL)
	{
		event = parse_body_guarded(json, body_len, !is_text && !utf8_db, &reason);
		if (event)
			return sb_apply_event(event, "webhook");
	}

	return record_unparsed_body(payload, is_text ? json :
								sanitized_copy(body, body_len, !utf8_db),
								reason, "webhook", NULL);
}

/* stripe_handle_webhook(payload text, signature_header text) -> outcome */
Datum
stripe_handle_webhook(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(handle_webhook(PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0),
													PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
													true)));
}

/* stripe_handle_webhook(payload bytea, signature_header text) -> outcome */
Datum
stripe_handle_webhook_bytea(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(handle_webhook(PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0),
													PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
													false)));
}

/*
 * Applies an object returned by a Stripe API call, as a snapshot taken at
 * the response's time (Stripe's Date header), through the same mapping as
 * events but without a ledger row.  The call has already happened at
 * Stripe, so a mapping failure only warns: the object's own event will come.
 */
void
sb_apply_api_object(Jsonb *object, pg_time_t snapshot, const char *request_id,
					const char *account)
{
	EventHeader header;
	JsonbValue	buf;
	JsonbValue *kind = getKeyJsonValueFromContainer(&object->root, "object", 6, &buf);
	char	   *error;
	const char *outcome;

	memset(&header, 0, sizeof(header));
	header.id = psprintf("api:%s", request_id ? request_id : "unknown");
	header.created = time_t_to_timestamptz(snapshot);
	header.livemode = sb_livemode;
	header.kind = pnstrdup(kind->val.string.val, kind->val.string.len);
	header.type = psprintf("%s.api_response", header.kind);
	header.snapshot = true;
	header.account = account ? pstrdup(account) : NULL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	lock_objects(&object->root, header.kind, header.account);
	outcome = map_object_guarded(object, &header, &error);
	/* (before SPI_finish, which frees the error's memory) */
	if (strcmp(outcome, "failed") == 0)
		ereport(WARNING,
				(errmsg("the %s returned by Stripe was not applied locally: %s", header.kind, error),
				 errdetail("Request %s.  Its event will apply it when it arrives.",
						   request_id ? request_id : "(none)")));
	SPI_finish();
}

/*
 * stripe_billing._apply_thin_object(event_id text, object jsonb,
 *     snapshot timestamptz, ev_type text, account text) -> outcome
 *
 * Applies the object a thin event's fetch brought (its related object, as
 * of the fetch: Stripe's Date header, or the object of the snapshot event
 * it names, as of that event) as a snapshot taken at snapshot, through the
 * same mapping and ordering rules as events, as the account's (NULL: the
 * platform's); ev_type is the snapshot type the mapping reads (the thin
 * type without "v1.").  Records the outcome (and error) on the thin
 * event's ledger row, which the caller has locked (level 0 of locks.c):
 * the object's keys are taken here, after it.
 */
Datum
stripe_apply_thin_object(PG_FUNCTION_ARGS)
{
	char	   *event_id = sb_text_arg(fcinfo, 0, "event_id");
	Jsonb	   *object;
	char	   *account = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	EventHeader header;
	JsonbValue	buf;
	JsonbValue *kind;
	const char *outcome;
	char	   *error = NULL;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("object, snapshot and ev_type must not be NULL")));
	object = PG_GETARG_JSONB_P(1);
	if (account)
		sb_check_account("account", account);
	if (!JB_ROOT_IS_OBJECT(object) || JB_ROOT_IS_SCALAR(object))
		ereport(ERROR,
				(errcode(ERRCODE_SB_INVALID_OBJECT),
				 errmsg("invalid Stripe object: the related object of thin event %s is not a JSON object",
						event_id)));
	kind = sb_jsonb_key(&object->root, "object", &buf);

	memset(&header, 0, sizeof(header));
	header.id = event_id;
	header.type = text_to_cstring(PG_GETARG_TEXT_PP(3));
	header.created = PG_GETARG_TIMESTAMPTZ(2);
	header.livemode = sb_livemode;
	header.snapshot = true;
	header.account = account;
	header.kind = kind && kind->type == jbvString ?
		pnstrdup(kind->val.string.val, kind->val.string.len) : NULL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (header.kind == NULL || sb_object_kind(header.kind) == NULL)
	{
		outcome = "failed";
		error = psprintf("the object fetched for thin event %s is %s%s%s, which is not mapped",
						 event_id, header.kind ? "a " : "", header.kind ? header.kind : "of no kind",
						 header.kind ? "" : " (no \"object\" field)");
	}
	else
	{
		lock_objects(&object->root, header.kind, header.account);
		outcome = map_object_guarded(object, &header, &error);
	}
	ledger_set_outcome(event_id, outcome, error);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(outcome));
}

/* A batch of snapshots to map, as run_guarded work. */
typedef struct SnapshotBatch
{
	Jsonb	  **objects;		/* the objects to map */
	int			first;			/* the elements [first, last) */
	int			last;
	EventHeader *headers;		/* one per element */
	const char **outcomes;
	bool		derive;			/* derive the users' features (else the caller does) */
} SnapshotBatch;

/* The header of one listed object, as a snapshot taken at snapshot. */
static void
snapshot_header(JsonbContainer *object, TimestampTz snapshot, const char *source,
				const char *account, EventHeader *header)
{
	JsonbValue	buf;
	JsonbValue *v;

	memset(header, 0, sizeof(*header));
	v = sb_jsonb_key(object, "object", &buf);
	if (v == NULL || v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_SB_INVALID_OBJECT),
				 errmsg("invalid Stripe object: field \"object\" is missing or not a string")));
	header->kind = pnstrdup(v->val.string.val, v->val.string.len);
	v = sb_jsonb_key(object, "id", &buf);
	header->id = psprintf("%s:%s", source,
						  v && v->type == jbvString ?
						  pnstrdup(v->val.string.val, Min(v->val.string.len, EVENT_KEY_MAX)) :
						  "(no id)");
	header->type = psprintf("%s.%s", header->kind, source);
	header->created = snapshot;
	header->livemode = sb_livemode;
	header->snapshot = true;
	header->account = account ? pstrdup(account) : NULL;
}

static void
map_batch_work(void *arg)
{
	SnapshotBatch *b = (SnapshotBatch *) arg;

	deferred_customers = NIL;
	deferred_context = CurrentMemoryContext;
	deferring = true;
	PG_TRY();
	{
		for (int i = b->first; i < b->last; i++)
		{
			CHECK_FOR_INTERRUPTS();
			b->outcomes[i] = map_object(b->objects[i], &b->headers[i]);
		}
		deferring = false;
		if (b->derive)
			derive_deferred(b->headers[b->first].type);
	}
	PG_FINALLY();
	{
		/* (never left on: every later derivation would be lost) */
		deferring = false;
		deferred_customers = NIL;
	}
	PG_END_TRY();
}

/*
 * stripe_billing._derivation_deferred(customer_id text) -> boolean
 *
 * Whether a batch of snapshots is being mapped; when so, the customer is
 * noted and its users' features are derived at the batch's end (inside the
 * batch's subtransaction: a failure there fails the batch).
 */
Datum
stripe_derivation_deferred(PG_FUNCTION_ARGS)
{
	MemoryContext oldcontext;

	if (!deferring)
		PG_RETURN_BOOL(false);
	oldcontext = MemoryContextSwitchTo(deferred_context);
	deferred_customers = lappend(deferred_customers, text_to_cstring(PG_GETARG_TEXT_PP(0)));
	MemoryContextSwitchTo(oldcontext);
	PG_RETURN_BOOL(true);
}

/*
 * Applies listed objects (a jsonb array, from a backfill or reconciliation
 * page) as snapshots taken at snapshot, through the same mapping and
 * ordering rules as events: a newer event keeps its row ("stale").  One
 * subtransaction for the whole page; only when an object fails is the page
 * mapped again one object at a time, so the others still apply and the
 * failed one is reported with its id (a WARNING) instead of failing the page
 * for ever.  An object whose id is a key of replacements (when not NULL) is
 * applied as the value there instead (a subscription whose items were
 * listed apart).  The users' features are derived at the end of the
 * batch, at once; unless derive is false: the caller then derives those of
 * the objects' customers itself (after several batches).  Returns
 * {"applied": n, "stale": n, "ignored": n, "failed": n, "outcomes": {id:
 * outcome, ...}}.
 */
Jsonb *
sb_apply_snapshots(Jsonb *objects, TimestampTz snapshot, const char *source,
				   Jsonb *replacements, bool derive, const char *account)
{
	SnapshotBatch b;
	int			n;
	int			counts[4] = {0, 0, 0, 0};
	static const char *const names[4] = {"applied", "stale", "ignored", "failed"};
	ErrorData  *edata;
	JsonbParseState *state = NULL;
	JsonbValue	key;
	JsonbValue	val;
	SbLockSet  *set;

	if (!JB_ROOT_IS_ARRAY(objects) || JB_ROOT_IS_SCALAR(objects))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("objects must be a jsonb array")));
	if (replacements && (!JB_ROOT_IS_OBJECT(replacements) || JB_ROOT_IS_SCALAR(replacements)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("replacements must be a jsonb object")));
	n = JB_ROOT_COUNT(objects);
	b.objects = palloc0(sizeof(Jsonb *) * Max(n, 1));
	b.headers = palloc0(sizeof(EventHeader) * Max(n, 1));
	b.outcomes = palloc0(sizeof(char *) * Max(n, 1));
	b.derive = derive;
	for (int i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(&objects->root, i);
		JsonbValue	buf;
		JsonbValue *id;
		JsonbValue *replacement = NULL;

		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_SB_INVALID_OBJECT),
					 errmsg("invalid Stripe object: element %d of the list is not an object", i)));
		/* an object completed apart (a subscription's items) stands for the listed one */
		if (replacements && (id = sb_jsonb_key(v->val.binary.data, "id", &buf)) != NULL &&
			id->type == jbvString)
			replacement = getKeyJsonValueFromContainer(&replacements->root, id->val.string.val,
													   id->val.string.len, NULL);
		if (replacement && (replacement->type != jbvBinary ||
							!JsonContainerIsObject(replacement->val.binary.data)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the replacement of element %d of the list is not an object", i)));
		if (replacement)
			v = replacement;
		b.objects[i] = JsonbValueToJsonb(v);
		snapshot_header(&b.objects[i]->root, snapshot, source, account, &b.headers[i]);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* every object's locks at once, before any row is written (locks.c) */
	set = sb_lockset_create();
	for (int i = 0; i < n; i++)
		sb_lockset_add_object(set, &b.objects[i]->root, b.headers[i].kind, b.headers[i].account);
	sb_lockset_acquire(set);
	b.first = 0;
	b.last = n;
	edata = n > 0 ? run_guarded(map_batch_work, &b) : NULL;
	if (edata != NULL)
	{
		/* the rare path: one subtransaction per object */
		FreeErrorData(edata);
		for (int i = 0; i < n; i++)
		{
			b.first = i;
			b.last = i + 1;
			edata = run_guarded(map_batch_work, &b);
			if (edata == NULL)
				continue;
			b.outcomes[i] = "failed";
			ereport(WARNING,
					(errmsg("stripe_billing: the listed %s %s was not applied: %s",
							b.headers[i].kind, b.headers[i].id + strlen(source) + 1,
							edata->message),
					 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
			FreeErrorData(edata);
		}
	}
	SPI_finish();

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
		for (int k = 0; k < 4; k++)
			if (strcmp(b.outcomes[i], names[k]) == 0)
				counts[k]++;
	for (int k = 0; k < 4; k++)
	{
		key.type = jbvString;
		key.val.string.val = unconstify(char *, names[k]);
		key.val.string.len = strlen(names[k]);
		pushJsonbValue(&state, WJB_KEY, &key);
		val.type = jbvNumeric;
		val.val.numeric = int64_to_numeric(counts[k]);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}
	key.type = jbvString;
	key.val.string.val = "outcomes";
	key.val.string.len = 8;
	pushJsonbValue(&state, WJB_KEY, &key);
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
	{
		const char *id = b.headers[i].id + strlen(source) + 1;

		key.type = jbvString;
		key.val.string.val = unconstify(char *, id);
		key.val.string.len = strlen(id);
		pushJsonbValue(&state, WJB_KEY, &key);
		val.type = jbvString;
		val.val.string.val = unconstify(char *, b.outcomes[i]);
		val.val.string.len = strlen(b.outcomes[i]);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * stripe_billing._record_unparsed_event(body text, reason text, source text)
 *   -> text
 *
 * Records a polled event that jsonb refuses (a \u0000 in a string, a
 * number beyond jsonb's range) as failed, with its text as its raw body and
 * the reason, as a webhook's is: its page goes on instead of failing for
 * ever.  Returns its id (also when it was in the ledger already).
 */
Datum
stripe_record_unparsed_event(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	char	   *scan = text_to_cstring(body);
	bytea	   *raw = (bytea *) palloc(VARSIZE_ANY_EXHDR(body) + VARHDRSZ);
	char	   *id = NULL;

	SET_VARSIZE(raw, VARSIZE_ANY_EXHDR(body) + VARHDRSZ);
	memcpy(VARDATA(raw), VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
	(void) record_unparsed_body(raw, scan, text_to_cstring(PG_GETARG_TEXT_PP(1)),
								text_to_cstring(PG_GETARG_TEXT_PP(2)), &id);
	PG_RETURN_TEXT_P(cstring_to_text(id));
}

/*
 * Splits the text of a list page ({"data": [...], "has_more": ...}) jsonb
 * refused, without decoding escapes: the text of each element of its
 * top-level "data" array (in order) and its "has_more".  Returns NULL, or
 * why the text is not such a page.
 */
static char *
split_list_page(char *json, int len, List **elements, bool *has_more)
{
	JsonLexContext *lex = sb_json_lexer(json, len, false);
	int			depth = 0;
	bool		expect_key = false;
	int			field = 0;		/* the root's next value: 1 data, 2 has_more */
	bool		in_data = false;	/* inside the root's data array */
	const char *element_start = NULL;

	JsonLexContext *check = sb_json_lexer(json, len, false);
	JsonParseErrorType parsed;

	*elements = NIL;
	*has_more = false;
	/* valid JSON first (a grammar check, strings not decoded): a page cut short is not a page */
	parsed = pg_parse_json(check, &nullSemAction);
	if (parsed != JSON_SUCCESS)
		return json_errdetail(parsed, check);
	for (;;)
	{
		JsonParseErrorType err = json_lex(lex);
		JsonTokenType tok = lex->token_type;

		CHECK_FOR_INTERRUPTS();
		if (err != JSON_SUCCESS)
			return json_errdetail(err, lex);
		if (tok == JSON_TOKEN_END)
			break;
		if (depth == 0 && tok != JSON_TOKEN_OBJECT_START)
			return "the page is not a JSON object";

		if (expect_key && tok == JSON_TOKEN_STRING && depth == 1)
		{
			char	   *problem;
			char	   *key = decode_string(lex->token_start,
											lex->token_terminator - lex->token_start, &problem);

			field = key == NULL ? 0 : strcmp(key, "data") == 0 ? 1 :
				strcmp(key, "has_more") == 0 ? 2 : 0;
			expect_key = false;
			continue;
		}
		expect_key = false;

		switch (tok)
		{
			case JSON_TOKEN_OBJECT_START:
			case JSON_TOKEN_ARRAY_START:
				if (in_data && depth == 2)
					element_start = lex->token_start;
				if (depth == 1 && field == 1 && tok == JSON_TOKEN_ARRAY_START)
					in_data = true;
				depth++;
				expect_key = tok == JSON_TOKEN_OBJECT_START;
				field = depth == 2 ? field : 0;
				break;
			case JSON_TOKEN_OBJECT_END:
			case JSON_TOKEN_ARRAY_END:
				depth--;
				if (in_data && depth == 2 && element_start)
				{
					*elements = lappend(*elements,
										pnstrdup(element_start, lex->token_terminator - element_start));
					element_start = NULL;
				}
				if (depth == 1)
				{
					in_data = false;
					field = 0;
				}
				break;
			case JSON_TOKEN_COMMA:
				/* (keys deeper than the root's are not looked at) */
				expect_key = depth == 1;
				break;
			case JSON_TOKEN_COLON:
				break;
			default:
				/* a scalar */
				if (in_data && depth == 2)
					return "an element of \"data\" is not an object";
				if (depth == 1 && field == 2)
					*has_more = tok == JSON_TOKEN_TRUE;
				break;
		}
	}
	return NULL;
}

/*
 * stripe_billing._split_list_page(body text, OUT has_more boolean,
 *                                 OUT items text[])
 *
 * See split_list_page; raises SBA07 when the text is not such a page.
 */
Datum
stripe_split_list_page(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	List	   *elements;
	bool		has_more;
	char	   *problem = split_list_page(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
										  &elements, &has_more);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	Datum	   *items;
	ListCell   *lc;
	int			i = 0;

	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("the page of events is not a JSON list: %s", problem)));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	items = palloc(sizeof(Datum) * Max(list_length(elements), 1));
	foreach(lc, elements)
		items[i++] = CStringGetTextDatum((char *) lfirst(lc));
	values[0] = BoolGetDatum(has_more);
	values[1] = PointerGetDatum(construct_array(items, i, TEXTOID, -1, false, TYPALIGN_INT));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
