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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_apply_event);
PG_FUNCTION_INFO_V1(stripe_handle_webhook);
PG_FUNCTION_INFO_V1(stripe_handle_webhook_bytea);

/* The fields of an event the ledger keeps in columns. */
typedef struct EventHeader
{
	char	   *id;
	char	   *type;
	char	   *api_version;	/* NULL when the event has none */
	bool		livemode;
	TimestampTz created;
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
}

/* Is this event type mapped onto billing tables? (none yet: the ledger only) */
static bool
event_type_is_mapped(const char *type)
{
	return false;
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

/*
 * Applies one event inside the caller's transaction and returns its outcome:
 * "ignored" (recorded, type not mapped), "duplicate" (id already recorded).
 */
const char *
sb_apply_event(Jsonb *event, const char *source)
{
	EventHeader header;
	const char *outcome;

	if (source == NULL || source[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event source must not be empty")));

	parse_event(event, &header);

	if (header.livemode != sb_livemode)
		ereport(ERROR,
				(errcode(ERRCODE_SB_LIVEMODE_MISMATCH),
				 errmsg("Stripe event %s is a %s event but this database accepts %s events",
						header.id,
						header.livemode ? "live-mode" : "test-mode",
						sb_livemode ? "live-mode" : "test-mode"),
				 errhint("stripe_billing.livemode selects the mode; an endpoint of the other mode is sending here.")));

	outcome = event_type_is_mapped(header.type) ? "applied" : "ignored";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!ledger_insert(&header, source, outcome, event))
		outcome = "duplicate";
	SPI_finish();

	return outcome;
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
