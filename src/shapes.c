/*-------------------------------------------------------------------------
 *
 * shapes.c
 *	  The JSON shapes of the Stripe objects that events are mapped from.
 *
 * The SQL mapping reads fields with ->> and casts; a field of the wrong JSON
 * type would either fail with a message that does not name it or, worse, be
 * stored as text.  So before mapping, every field the mapping reads is
 * checked here against its expected JSON type, and the first mismatch
 * raises an error naming the field by its full path
 * ("data.object.items.data[1].quantity").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "stripe_billing.h"

/* Accepted JSON types of a field (a mask); JSON null is always accepted. */
#define J_STR	0x01
#define J_INT	0x02			/* a number without fraction */
#define J_BOOL	0x04
#define J_OBJ	0x08
#define J_ARR	0x10
#define J_ID	0x20			/* a string id, or an expanded object with one */

typedef struct FieldSpec
{
	const char *path;			/* dotted; "name[]" walks every array element */
	int			types;
	bool		required;		/* must be present and not null */
} FieldSpec;

typedef struct ObjectShape
{
	const char *kind;			/* the object's "object" field */
	const FieldSpec *fields;
} ObjectShape;

/* The list of a subscription's items, as embedded in the subscription. */
#define ITEM_FIELDS(prefix) \
	{prefix "id", J_STR, true}, \
	{prefix "quantity", J_INT, false}, \
	{prefix "current_period_start", J_INT, false}, \
	{prefix "current_period_end", J_INT, false}, \
	{prefix "price", J_OBJ, false}, \
	{prefix "price.id", J_STR, true}, \
	{prefix "price.product", J_ID, false}, \
	{prefix "price.lookup_key", J_STR, false}, \
	{prefix "plan", J_OBJ, false}, \
	{prefix "plan.id", J_STR, true}, \
	{prefix "plan.product", J_ID, false}

static const FieldSpec customer_fields[] = {
	{"id", J_STR, true},
	{"email", J_STR, false},
	{"name", J_STR, false},
	{"deleted", J_BOOL, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec product_fields[] = {
	{"id", J_STR, true},
	{"name", J_STR, false},
	{"description", J_STR, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec price_fields[] = {
	{"id", J_STR, true},
	{"product", J_ID, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"currency", J_STR, false},
	{"unit_amount", J_INT, false},
	{"type", J_STR, false},
	{"recurring", J_OBJ, false},
	{"recurring.interval", J_STR, false},
	{"recurring.interval_count", J_INT, false},
	{"recurring.usage_type", J_STR, false},
	{"lookup_key", J_STR, false},
	{"nickname", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec plan_fields[] = {
	{"id", J_STR, true},
	{"product", J_ID, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"currency", J_STR, false},
	{"amount", J_INT, false},
	{"interval", J_STR, false},
	{"interval_count", J_INT, false},
	{"usage_type", J_STR, false},
	{"nickname", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec subscription_fields[] = {
	{"id", J_STR, true},
	{"customer", J_ID, true},
	{"status", J_STR, true},
	{"cancel_at_period_end", J_BOOL, false},
	{"cancel_at", J_INT, false},
	{"canceled_at", J_INT, false},
	{"ended_at", J_INT, false},
	{"current_period_start", J_INT, false},
	{"current_period_end", J_INT, false},
	{"trial_start", J_INT, false},
	{"trial_end", J_INT, false},
	{"pause_collection", J_OBJ, false},
	{"latest_invoice", J_ID, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{"items", J_OBJ, true},
	{"items.data", J_ARR, true},
	{"items.has_more", J_BOOL, false},
	ITEM_FIELDS("items.data[]."),
	{NULL}
};

static const FieldSpec invoice_fields[] = {
	{"id", J_STR, true},
	{"customer", J_ID, false},
	{"subscription", J_ID, false},
	{"parent", J_OBJ, false},
	{"parent.subscription_details", J_OBJ, false},
	{"parent.subscription_details.subscription", J_ID, false},
	{"status", J_STR, false},
	{"amount_due", J_INT, false},
	{"amount_paid", J_INT, false},
	{"amount_remaining", J_INT, false},
	{"currency", J_STR, false},
	{"attempt_count", J_INT, false},
	{"next_payment_attempt", J_INT, false},
	{"hosted_invoice_url", J_STR, false},
	{"invoice_pdf", J_STR, false},
	{"period_start", J_INT, false},
	{"period_end", J_INT, false},
	{"billing_reason", J_STR, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec invoice_payment_fields[] = {
	{"id", J_STR, true},
	{"invoice", J_ID, true},
	{"amount_paid", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"payment", J_OBJ, false},
	{"payment.payment_intent", J_ID, false},
	{"payment.charge", J_ID, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec payment_intent_fields[] = {
	{"id", J_STR, true},
	{"customer", J_ID, false},
	{"invoice", J_ID, false},
	{"amount", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"last_payment_error", J_OBJ, false},
	{"last_payment_error.code", J_STR, false},
	{"last_payment_error.message", J_STR, false},
	{"created", J_INT, false},
	{NULL}
};

#define REFUND_FIELDS(prefix) \
	{prefix "id", J_STR, true}, \
	{prefix "charge", J_ID, false}, \
	{prefix "payment_intent", J_ID, false}, \
	{prefix "amount", J_INT, false}, \
	{prefix "currency", J_STR, false}, \
	{prefix "status", J_STR, false}, \
	{prefix "failure_reason", J_STR, false}, \
	{prefix "created", J_INT, false}

static const FieldSpec charge_fields[] = {
	{"id", J_STR, true},
	{"customer", J_ID, false},
	{"invoice", J_ID, false},
	{"payment_intent", J_ID, false},
	{"amount", J_INT, false},
	{"amount_refunded", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"failure_code", J_STR, false},
	{"failure_message", J_STR, false},
	{"created", J_INT, false},
	{"refunds", J_OBJ, false},
	{"refunds.data", J_ARR, false},
	REFUND_FIELDS("refunds.data[]."),
	{NULL}
};

static const FieldSpec refund_fields[] = {
	REFUND_FIELDS(""),
	{NULL}
};

static const FieldSpec checkout_session_fields[] = {
	{"id", J_STR, true},
	{"client_reference_id", J_STR, false},
	{"customer", J_ID, false},
	{"customer_email", J_STR, false},
	{"customer_details", J_OBJ, false},
	{"customer_details.email", J_STR, false},
	{"mode", J_STR, false},
	{"status", J_STR, false},
	{"payment_status", J_STR, false},
	{"subscription", J_ID, false},
	{"payment_intent", J_ID, false},
	{"amount_total", J_INT, false},
	{"currency", J_STR, false},
	{"url", J_STR, false},
	{"expires_at", J_INT, false},
	{"metadata", J_OBJ, false},
	{"created", J_INT, false},
	{NULL}
};

static const FieldSpec entitlement_summary_fields[] = {
	{"customer", J_STR, true},
	{"entitlements", J_OBJ, true},
	{"entitlements.data", J_ARR, true},
	{"entitlements.has_more", J_BOOL, false},
	{"entitlements.data[].id", J_STR, false},
	{"entitlements.data[].feature", J_ID, true},
	{"entitlements.data[].lookup_key", J_STR, true},
	{NULL}
};

static const ObjectShape shapes[] = {
	{"customer", customer_fields},
	{"product", product_fields},
	{"price", price_fields},
	{"plan", plan_fields},
	{"subscription", subscription_fields},
	{"invoice", invoice_fields},
	{"invoice_payment", invoice_payment_fields},
	{"payment_intent", payment_intent_fields},
	{"charge", charge_fields},
	{"refund", refund_fields},
	{"checkout.session", checkout_session_fields},
	{"entitlements.active_entitlement_summary", entitlement_summary_fields},
};

/* Describes a type mask for messages. */
static const char *
expected_types(int types)
{
	if (types & J_ID)
		return "an id string or an object with an id";
	switch (types)
	{
		case J_STR:
			return "a string";
		case J_INT:
			return "an integer";
		case J_BOOL:
			return "a boolean";
		case J_OBJ:
			return "an object";
		case J_ARR:
			return "an array";
	}
	return "of another type";
}

/* Raises the error for a field of the wrong type. */
static void
wrong_field(const StringInfo where, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_SB_INVALID_OBJECT),
			 errmsg("invalid Stripe object: field \"%s\" %s", where->data, problem)));
}

/* Is v an integral JSON number? */
static bool
is_integer(JsonbValue *v)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
														NumericGetDatum(v->val.numeric)));

	return strspn(s, "-0123456789") == strlen(s);
}

/* Checks one leaf value against its accepted types. */
static void
check_value(JsonbValue *v, int types, bool required, const StringInfo where)
{
	bool		ok;

	if (v == NULL || v->type == jbvNull)
	{
		if (required)
			wrong_field(where, "is missing");
		return;
	}
	switch (v->type)
	{
		case jbvString:
			ok = (types & (J_STR | J_ID)) != 0;
			break;
		case jbvNumeric:
			ok = (types & J_INT) != 0 && is_integer(v);
			break;
		case jbvBool:
			ok = (types & J_BOOL) != 0;
			break;
		case jbvBinary:
			if (JsonContainerIsObject(v->val.binary.data))
			{
				ok = (types & (J_OBJ | J_ID)) != 0;
				if (ok && (types & J_ID) && !(types & J_OBJ))
				{
					/* an expanded object stands for its id */
					JsonbValue	buf;
					JsonbValue *id = getKeyJsonValueFromContainer(v->val.binary.data,
																  "id", 2, &buf);

					if (id == NULL || id->type != jbvString)
					{
						appendStringInfoString(where, ".id");
						wrong_field(where, "must be a string");
					}
				}
			}
			else
				ok = (types & J_ARR) != 0;
			break;
		default:
			ok = false;
	}
	if (!ok)
		wrong_field(where, psprintf("must be %s, not %s", expected_types(types),
									JsonbTypeName(v)));
}

/*
 * Walks segs[i..] of a field path from container c (an object), appending
 * the path walked to where, and checks the leaf.  Missing intermediate
 * objects are fine: their own specs say whether they are required.
 */
static void
check_path(JsonbContainer *c, char **segs, int nsegs, int i,
		   const FieldSpec *spec, StringInfo where)
{
	char	   *seg = segs[i];
	size_t		len = strlen(seg);
	bool		each = len > 2 && strcmp(seg + len - 2, "[]") == 0;
	JsonbValue	buf;
	JsonbValue *v;
	int			base_len;

	if (each)
		len -= 2;
	v = getKeyJsonValueFromContainer(c, seg, len, &buf);
	appendStringInfo(where, ".%.*s", (int) len, seg);

	if (i == nsegs - 1 && !each)
	{
		check_value(v, spec->types, spec->required, where);
		return;
	}
	if (v == NULL || v->type == jbvNull)
		return;

	if (!each)
	{
		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			wrong_field(where, psprintf("must be an object, not %s", JsonbTypeName(v)));
		check_path(v->val.binary.data, segs, nsegs, i + 1, spec, where);
		return;
	}

	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		wrong_field(where, psprintf("must be an array, not %s", JsonbTypeName(v)));
	base_len = where->len;
	for (uint32 k = 0; k < JsonContainerSize(v->val.binary.data); k++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(v->val.binary.data, k);

		where->len = base_len;
		where->data[base_len] = '\0';
		appendStringInfo(where, "[%u]", k);
		if (i == nsegs - 1)
			check_value(elem, spec->types, spec->required, where);
		else
		{
			if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
				wrong_field(where, psprintf("must be an object, not %s", JsonbTypeName(elem)));
			check_path(elem->val.binary.data, segs, nsegs, i + 1, spec, where);
		}
	}
}

/* Is kind an object kind events are mapped from? */
bool
sb_object_kind_is_known(const char *kind)
{
	for (int i = 0; i < lengthof(shapes); i++)
		if (strcmp(shapes[i].kind, kind) == 0)
			return true;
	return false;
}

/*
 * Checks every field the mapping of this kind of object reads; raises
 * SBE03 naming the first bad field.
 */
void
sb_check_object_shape(JsonbContainer *object, const char *kind)
{
	const ObjectShape *shape = NULL;
	StringInfoData where;

	for (int i = 0; i < lengthof(shapes) && shape == NULL; i++)
		if (strcmp(shapes[i].kind, kind) == 0)
			shape = &shapes[i];
	if (shape == NULL)
		elog(ERROR, "no shape for Stripe object kind \"%s\"", kind);

	initStringInfo(&where);
	for (const FieldSpec *spec = shape->fields; spec->path; spec++)
	{
		char	   *copy = pstrdup(spec->path);
		char	   *segs[8];
		int			nsegs = 0;
		char	   *save;

		for (char *s = strtok_r(copy, ".", &save); s && nsegs < lengthof(segs);
			 s = strtok_r(NULL, ".", &save))
			segs[nsegs++] = s;

		resetStringInfo(&where);
		appendStringInfoString(&where, "data.object");
		check_path(object, segs, nsegs, 0, spec, &where);
		pfree(copy);
	}
	pfree(where.data);
}
