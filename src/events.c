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
 * "failed" with the error, while the caller's transaction goes on.  Ordering (stale, ties, terminal states) is
 * decided by the mapping, per object row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_apply_event);
PG_FUNCTION_INFO_V1(stripe_handle_webhook);
PG_FUNCTION_INFO_V1(stripe_handle_webhook_bytea);
PG_FUNCTION_INFO_V1(stripe_reapply_event);

/* The fields of an event the ledger keeps in columns. */
typedef struct EventHeader
{
	char	   *id;
	char	   *type;
	char	   *api_version;	/* NULL when the event has none */
	bool		livemode;
	TimestampTz created;
	char	   *kind;			/* data.object.object; NULL if absent */
} EventHeader;

/*
 * Event types mapped onto billing tables, and the object kinds each carries.
 * A type that matches but carries another kind (charge.dispute.* carries a
 * dispute) is recorded as ignored.  First match wins.
 */
typedef struct EventFamily
{
	const char *type;			/* an exact type, or a prefix ending in '.' */
	const char *kinds[2];
} EventFamily;

static const EventFamily mapped_families[] = {
	{"checkout.session.", {"checkout.session"}},
	{"customer.subscription.", {"subscription"}},
	{"customer.created", {"customer"}},
	{"customer.updated", {"customer"}},
	{"customer.deleted", {"customer"}},
	{"invoice.upcoming", {NULL}},	/* a preview without an id: nothing to keep */
	{"invoice.", {"invoice"}},
	{"invoice_payment.paid", {"invoice_payment"}},
	{"payment_intent.", {"payment_intent"}},
	{"charge.", {"charge", "refund"}},
	{"refund.", {"refund"}},
	{"product.", {"product"}},
	{"price.", {"price"}},
	{"plan.", {"plan"}},
	{"entitlements.active_entitlement_summary.updated",
	{"entitlements.active_entitlement_summary"}},
};

/* Raises the error for a missing or mistyped event field. */
static void
malformed(const char *field, const char *problem, const char *event_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_SB_MALFORMED_EVENT),
			 errmsg("malformed Stripe event: field \"%s\" %s", field, problem),
			 event_id ? errdetail("Event id: %s.", event_id) : 0));
}

/* Returns the value of key in an object container, or NULL if absent. */
static JsonbValue *
get_key(JsonbContainer *object, const char *key, JsonbValue *buf)
{
	return getKeyJsonValueFromContainer(object, key, strlen(key), buf);
}

/* A required non-empty string field; field is the dotted name for errors. */
static char *
required_string(JsonbContainer *object, const char *key, const char *field,
				const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = get_key(object, key, &buf);

	if (v == NULL || v->type == jbvNull)
		malformed(field, "is missing", event_id);
	if (v->type != jbvString)
		malformed(field, psprintf("must be a string, not %s", JsonbTypeName(v)), event_id);
	if (v->val.string.len == 0)
		malformed(field, "must not be empty", event_id);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* A required JSON object field. */
static JsonbContainer *
required_object(JsonbContainer *object, const char *key, const char *field,
				const char *event_id)
{
	JsonbValue	buf;
	JsonbValue *v = get_key(object, key, &buf);

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
	JsonbValue *v = get_key(object, key, &buf);
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
	JsonbValue *data = get_key(&event->root, "data", &buf);

	return get_key(data->val.binary.data, "object", &buf)->val.binary.data;
}

/* Sets header->kind from data.object.object (NULL when absent). */
static void
parse_event_kind(Jsonb *event, EventHeader *header)
{
	JsonbValue	buf;
	JsonbValue *v = get_key(event_object(event), "object", &buf);

	header->kind = (v && v->type == jbvString) ?
		pnstrdup(v->val.string.val, v->val.string.len) : NULL;
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

	header->id = required_string(root, "id", "id", NULL);

	/* a bare API object passed by mistake is refused, not misread */
	v = get_key(root, "object", &buf);
	if (v != NULL && !(v->type == jbvString && v->val.string.len == 5 &&
					   memcmp(v->val.string.val, "event", 5) == 0))
		malformed("object", "must be \"event\"", header->id);

	header->type = required_string(root, "type", "type", header->id);
	header->created = required_unix_time(root, "created", "created", header->id);

	v = get_key(root, "livemode", &buf);
	if (v == NULL || v->type == jbvNull)
		malformed("livemode", "is missing", header->id);
	if (v->type != jbvBool)
		malformed("livemode", psprintf("must be a boolean, not %s", JsonbTypeName(v)),
				  header->id);
	header->livemode = v->val.boolean;

	v = get_key(root, "api_version", &buf);
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

/*
 * Is this event mapped onto billing tables?  An object without a kind is
 * mapped (and will fail, naming data.object.object) when its type is.
 */
static bool
event_is_mapped(const EventHeader *header)
{
	for (int i = 0; i < lengthof(mapped_families); i++)
	{
		const EventFamily *family = &mapped_families[i];
		size_t		len = strlen(family->type);
		bool		match = family->type[len - 1] == '.' ?
			strncmp(header->type, family->type, len) == 0 :
			strcmp(header->type, family->type) == 0;

		if (!match)
			continue;
		if (header->kind == NULL)
			return family->kinds[0] != NULL;
		for (int k = 0; k < lengthof(family->kinds) && family->kinds[k]; k++)
			if (strcmp(header->kind, family->kinds[k]) == 0)
				return true;
		return false;
	}
	return false;
}

/*
 * Errors that say nothing about the event, only about this moment (cancel,
 * deadlock, serialization failure, shutdown, out of memory, a bug): they
 * abort the caller's transaction instead of marking the event failed.
 */
static bool
error_is_transient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TRANSACTION_ROLLBACK:	/* 40: serialization, deadlock */
		case ERRCODE_INSUFFICIENT_RESOURCES:	/* 53 */
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:	/* 54 */
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
 * The SQL function that maps each kind of object, in schema stripe_billing:
 * f(o jsonb, ev_type text, ev_id text, ev_created timestamptz), or without
 * ev_type.  Called through fmgr, not a SELECT: no executor of our own around
 * the mapping's own statements.  The function is looked up by name on first
 * use and again after any pg_proc change (the extension may be recreated).
 */
typedef struct ObjectMapper
{
	const char *kind;
	const char *function;
	bool		takes_type;		/* has the ev_type argument */
	bool		valid;			/* flinfo is looked up and current */
	FmgrInfo	flinfo;
} ObjectMapper;

static ObjectMapper mappers[] = {
	{"customer", "_apply_customer", true},
	{"product", "_apply_product", true},
	{"price", "_apply_price", true},
	{"plan", "_apply_price", true},
	{"subscription", "_apply_subscription", true},
	{"invoice", "_apply_invoice", true},
	{"payment_intent", "_apply_payment", false},
	{"charge", "_apply_payment", false},
	{"refund", "_apply_payment", false},
	{"invoice_payment", "_apply_payment", false},
	{"checkout.session", "_apply_checkout_session", true},
	{"entitlements.active_entitlement_summary", "_apply_entitlement_summary", true},
};

/* A pg_proc change: look the mapping functions up again on next use. */
static void
invalidate_mappers(Datum arg, int cacheid, uint32 hashvalue)
{
	for (int i = 0; i < lengthof(mappers); i++)
		mappers[i].valid = false;
}

/* The mapper of a kind, its function looked up. */
static ObjectMapper *
get_mapper(const char *kind)
{
	static bool callback_registered = false;
	ObjectMapper *mapper = NULL;

	for (int i = 0; i < lengthof(mappers) && mapper == NULL; i++)
		if (strcmp(mappers[i].kind, kind) == 0)
			mapper = &mappers[i];
	if (mapper == NULL)
		elog(ERROR, "no mapping for Stripe object kind \"%s\"", kind);

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, invalidate_mappers, (Datum) 0);
		callback_registered = true;
	}
	if (!mapper->valid)
	{
		Oid			with_type[4] = {JSONBOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
		Oid			without_type[3] = {JSONBOID, TEXTOID, TIMESTAMPTZOID};
		List	   *name = list_make2(makeString("stripe_billing"),
									  makeString(unconstify(char *, mapper->function)));
		Oid			fn = mapper->takes_type ?
			LookupFuncName(name, 4, with_type, false) :
			LookupFuncName(name, 3, without_type, false);
		fmgr_info_cxt(fn, &mapper->flinfo, TopMemoryContext);
		mapper->valid = true;
	}
	return mapper;
}

/* Runs the SQL mapping of one object: "applied", "stale" or "ignored". */
static const char *
map_object(Jsonb *object, const EventHeader *header)
{
	ObjectMapper *mapper;
	LOCAL_FCINFO(fcinfo, 4);
	int			nargs = 0;
	Datum		result;

	if (header->kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SB_INVALID_OBJECT),
				 errmsg("invalid Stripe object: field \"data.object.object\" is missing")));
	sb_check_object_shape(&object->root, header->kind);
	mapper = get_mapper(header->kind);

	fcinfo->args[nargs++].value = JsonbPGetDatum(object);
	if (mapper->takes_type)
		fcinfo->args[nargs++].value = CStringGetTextDatum(header->type);
	fcinfo->args[nargs++].value = CStringGetTextDatum(header->id);
	fcinfo->args[nargs++].value = TimestampTzGetDatum(header->created);
	for (int i = 0; i < nargs; i++)
		fcinfo->args[i].isnull = false;
	InitFunctionCallInfoData(*fcinfo, &mapper->flinfo, nargs, InvalidOid, NULL, NULL);

	result = FunctionCallInvoke(fcinfo);
	return fcinfo->isnull ? "applied" : canonical_outcome(TextDatumGetCString(result));
}

/* An event's data.object as a jsonb datum of its own (a copy). */
static Jsonb *
event_object_jsonb(Jsonb *event)
{
	JsonbValue	buf;
	JsonbValue *data = get_key(&event->root, "data", &buf);
	JsonbValue	object_buf;

	return JsonbValueToJsonb(get_key(data->val.binary.data, "object", &object_buf));
}

/*
 * Maps an object inside a subtransaction.  Returns the outcome; for "failed",
 * *error is the message (with its detail).  Transient errors are re-thrown.
 */
static const char *
map_object_guarded(Jsonb *object, const EventHeader *header, char **error)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	const char *volatile outcome = NULL;

	*error = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		outcome = map_object(object, header);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;

		/* our subtransaction is gone: a caller's handler sees a clean state */
		if (error_is_transient(edata->sqlerrcode))
			ReThrowError(edata);

		*error = edata->detail ? psprintf("%s (%s)", edata->message, edata->detail)
			: pstrdup(edata->message);
		FreeErrorData(edata);
		outcome = "failed";
	}
	PG_END_TRY();

	return outcome;
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
 * Records the event in the ledger with the given outcome.  Returns false when
 * the id was already there (possibly after waiting for a concurrent delivery
 * of the same id to commit).
 */
static bool
ledger_insert(const EventHeader *header, const char *source, const char *outcome,
			  Jsonb *event)
{
	static SPIPlanPtr plan = NULL;
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	if (plan == NULL)
	{
		Oid			types[8] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID,
		TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID};

		plan = SPI_prepare("INSERT INTO stripe_billing.events"
						   " (id, type, api_version, livemode, created, source, outcome, payload)"
						   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
						   " ON CONFLICT (id) DO NOTHING",
						   8, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
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
	values[7] = JsonbPGetDatum(event);

	rc = SPI_execute_plan(plan, values, nulls, false, 0);
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

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* record first, as applied: the common case then costs one insert */
	if (!ledger_insert(&header, source, mapped ? "applied" : "ignored", event))
		outcome = "duplicate";
	else if (!mapped)
		outcome = "ignored";
	else
	{
		char	   *error;

		outcome = map_object_guarded(event_object_jsonb(event), &header, &error);
		if (strcmp(outcome, "applied") != 0)
			ledger_set_outcome(header.id, outcome, error);
	}

	SPI_finish();
	return outcome;
}

/*
 * stripe_billing._reapply_event(id text) -> outcome
 *
 * Applies a recorded event again (a failed one, or an ignored one whose type
 * is now mapped) and records the new outcome.  The caller locks the row.
 */
Datum
stripe_reapply_event(PG_FUNCTION_ARGS)
{
	char	   *id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Datum		arg = PG_GETARG_DATUM(0);
	Oid			argtype = TEXTOID;
	EventHeader header;
	Jsonb	   *event;
	const char *outcome;
	char	   *error = NULL;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT payload FROM stripe_billing.events WHERE id = $1",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading stripe_billing.events failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("Stripe event %s is not in the ledger", id)));
	event = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										 1, &isnull));

	parse_event(event, &header);
	if (!event_is_mapped(&header))
		outcome = "ignored";
	else
		outcome = map_object_guarded(event_object_jsonb(event), &header, &error);
	ledger_set_outcome(header.id, outcome, error);

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
 * Verifies a webhook against stripe_billing.webhook_secret, parses the
 * payload and applies it with source "webhook".  The payload is the raw body
 * in bytes; is_text says it is already in the database encoding, otherwise
 * it is UTF-8, as Stripe sends it.
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

	nsecrets = sb_split_secret_list(sb_webhook_secret, &secrets, &secret_lens);
	sb_check_signature(body, body_len,
					   header ? VARDATA_ANY(header) : NULL,
					   header ? VARSIZE_ANY_EXHDR(header) : 0,
					   (const char *const *) secrets, secret_lens, nsecrets,
					   sb_webhook_tolerance,
					   timestamptz_to_time_t(GetCurrentTimestamp()));

	/* verified: now the bytes must be text (this raises on invalid UTF-8) */
	json = is_text ? unconstify(char *, body) :
		pg_any_to_server(body, body_len, PG_UTF8);
	if (json == body)
		json = pnstrdup(body, body_len);

	return sb_apply_event(DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															 CStringGetDatum(json))),
						  "webhook");
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
sb_apply_api_object(Jsonb *object, pg_time_t snapshot, const char *request_id)
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

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	outcome = map_object_guarded(object, &header, &error);
	SPI_finish();

	if (strcmp(outcome, "failed") == 0)
		ereport(WARNING,
				(errmsg("the %s returned by Stripe was not applied locally: %s", header.kind, error),
				 errdetail("Request %s.  Its event will apply it when it arrives.",
						   request_id ? request_id : "(none)")));
}
