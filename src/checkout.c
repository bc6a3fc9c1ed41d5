/*-------------------------------------------------------------------------
 *
 * checkout.c
 *	  stripe_create_checkout: a Stripe Checkout session for a user.
 *
 * This is the call an application makes on a user's request path, so it is
 * written in C: the arguments are checked here, the user's customer is
 * found through one saved plan, the form is built directly (no jsonb on the way
 * out), and sb_stripe_call_form sends it and applies the returned session
 * to checkout_sessions through the same mapping as its events.
 *
 * Stripe Connect's two charge types users ask for: a direct charge is a
 * session of the connected account (account, sent as Stripe-Account; the
 * customer is the account's), the platform's share an application fee
 * (application_fee_percent of a subscription's invoices,
 * application_fee_amount of a payment); a destination charge is the
 * platform's session whose funds go to a connected account
 * (transfer_destination), optionally settled by it (on_behalf_of).  The
 * combinations Stripe refuses are refused here, naming the argument, before
 * any request.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_create_checkout);

/* Argument positions of stripe_create_checkout. */
enum
{
	ARG_USER_REF,
	ARG_PRICE,
	ARG_SUCCESS_URL,
	ARG_CANCEL_URL,
	ARG_QUANTITY,
	ARG_MODE,
	ARG_TRIAL_DAYS,
	ARG_ALLOW_PROMOTION_CODES,
	ARG_CUSTOMER_EMAIL,
	ARG_METADATA,
	ARG_IDEMPOTENCY_KEY,
	ARG_ALLOW_REPEAT_TRIAL,		/* (0.2.0 on) */
	ARG_APPLICATION_FEE_PERCENT,	/* (0.4.0 on) */
	ARG_APPLICATION_FEE_AMOUNT,
	ARG_TRANSFER_DESTINATION,
	ARG_ON_BEHALF_OF,
	ARG_ACCOUNT,
	ARG_PROMOTION_CODE,
	ARG_COUPON
};

/* Was argument argno given (declared by this version's SQL, and not NULL)? */
#define ARG_GIVEN(argno) (PG_NARGS() > (argno) && !PG_ARGISNULL(argno))

/* Stripe's limits on metadata and client_reference_id (characters). */
#define METADATA_MAX_KEYS 50
#define METADATA_KEY_MAX 40
#define METADATA_VALUE_MAX 500
#define CLIENT_REFERENCE_ID_MAX 200

/* Raises invalid_parameter_value naming the argument. */
static void
bad_argument(const char *argument, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s %s", argument, problem)));
}

/* A text argument that must be given and not empty. */
static char *
required_text(FunctionCallInfo fcinfo, int argno, const char *name)
{
	char	   *value = PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));

	if (value == NULL || value[0] == '\0')
		bad_argument(name, "must not be empty");
	return value;
}

/* A text argument, or NULL when NULL or empty. */
static char *
optional_text(FunctionCallInfo fcinfo, int argno)
{
	char	   *value = PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));

	return value && value[0] ? value : NULL;
}

/*
 * The user's known customer of the account (stripe_billing._customer_of;
 * account NULL: the platform's), or NULL; and whether any subscription of
 * theirs on that account ever had a trial, whatever its status.  Asked in
 * the words of the SQL the database has: 0.1.0 has no _had_trial (no trial
 * is known there), 0.2.0 and 0.3.0 take no account, and 0.4.0 gives the
 * platform's as the default account.
 */
static char *
user_facts(const char *user_ref, const char *account, bool with_had_trial, bool *had_trial)
{
	static SPIPlanPtr plans[3] = {NULL, NULL, NULL};
	static const char *const queries[3] = {
		"SELECT stripe_billing._customer_of($1), false",
		"SELECT stripe_billing._customer_of($1), stripe_billing._had_trial($1)",
		"SELECT stripe_billing._customer_of($1, $2), stripe_billing._had_trial($1, $2)"
	};
	int			which = account ? 2 : with_had_trial ? 1 : 0;
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[2];
	char	   *customer = NULL;

	*had_trial = false;
	args[0] = CStringGetTextDatum(user_ref);
	args[1] = account ? CStringGetTextDatum(account) : (Datum) 0;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plans[which] == NULL)
	{
		Oid			types[2] = {TEXTOID, TEXTOID};
		SPIPlanPtr	p = SPI_prepare(queries[which], account ? 2 : 1, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plans[which] = p;
	}
	if (SPI_execute_plan(plans[which], args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading stripe_billing.customers failed");
	if (SPI_processed == 1)
	{
		char	   *id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		bool		isnull;
		Datum		trial = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		if (id)
			customer = MemoryContextStrdup(caller, id);
		*had_trial = !isnull && DatumGetBool(trial);
	}
	SPI_finish();
	return customer;
}

/*
 * The discount of the session, as stripe_billing._checkout_discount
 * resolves and checks it (naming the argument it refuses): appended as
 * discounts[0][promotion_code] or discounts[0][coupon].  (Arguments of the
 * 0.4.0 SQL: none before.)
 */
static void
append_discount(StringInfo form, FunctionCallInfo fcinfo, const char *account)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	char	   *field = NULL;
	char	   *value = NULL;

	if (!ARG_GIVEN(ARG_PROMOTION_CODE) && !ARG_GIVEN(ARG_COUPON))
		return;
	args[0] = ARG_GIVEN(ARG_PROMOTION_CODE) ? PG_GETARG_DATUM(ARG_PROMOTION_CODE) : (Datum) 0;
	nulls[0] = ARG_GIVEN(ARG_PROMOTION_CODE) ? ' ' : 'n';
	args[1] = ARG_GIVEN(ARG_COUPON) ? PG_GETARG_DATUM(ARG_COUPON) : (Datum) 0;
	nulls[1] = ARG_GIVEN(ARG_COUPON) ? ' ' : 'n';
	args[2] = BoolGetDatum(!PG_ARGISNULL(ARG_ALLOW_PROMOTION_CODES) && PG_GETARG_BOOL(ARG_ALLOW_PROMOTION_CODES));
	args[3] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[3] = account ? ' ' : 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			types[4] = {TEXTOID, TEXTOID, BOOLOID, TEXTOID};
		SPIPlanPtr	p = SPI_prepare("SELECT d.field, d.value FROM stripe_billing._checkout_discount($1, $2, $3, $4) d",
									4, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plan = p;
	}
	if (SPI_execute_plan(plan, args, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking the discount failed");
	if (SPI_processed == 1)
	{
		char	   *f = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		if (f && v)
		{
			field = MemoryContextStrdup(caller, f);
			value = MemoryContextStrdup(caller, v);
		}
	}
	SPI_finish();
	if (field)
		sb_form_append(form, field, value);
}

/*
 * Appends metadata[key]=value for each entry of the caller's metadata but
 * user_ref (ours wins).  Stripe keeps metadata as flat strings within
 * limits: a nested value, a key with "[" or "]" (it would change the form's
 * structure), a key over 40 or a value over 500 characters, or more than 49
 * keys (with user_ref, Stripe's 50) are refused here, naming the key,
 * before any request.
 */
static void
append_metadata(StringInfo form, Jsonb *metadata)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			keys = 0;

	if (!JB_ROOT_IS_OBJECT(metadata))
		bad_argument("metadata", "must be a JSON object");

	it = JsonbIteratorInit(&metadata->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *value;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		switch (v.type)
		{
			case jbvString:
				value = pnstrdup(v.val.string.val, v.val.string.len);
				break;
			case jbvNumeric:
				value = DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(v.val.numeric)));
				break;
			case jbvBool:
				value = v.val.boolean ? "true" : "false";
				break;
			default:
				bad_argument(psprintf("metadata.%s", key),
							 psprintf("must be a string, number or boolean, not %s",
									  v.type == jbvNull ? "null" :
									  JsonContainerIsArray(v.val.binary.data) ? "array" : "object"));
				value = NULL;	/* keep compiler quiet */
		}
		if (strcmp(key, "user_ref") == 0)
			continue;
		if (strpbrk(key, "[]") != NULL)
			bad_argument(psprintf("metadata key \"%s\"", key), "must not contain \"[\" or \"]\"");
		if (key[0] == '\0')
			bad_argument("metadata", "must not have an empty key");
		if (pg_mbstrlen(key) > METADATA_KEY_MAX)
			bad_argument(psprintf("metadata key \"%s\"", key),
						 psprintf("must be at most %d characters, not %d", METADATA_KEY_MAX, pg_mbstrlen(key)));
		if (pg_mbstrlen(value) > METADATA_VALUE_MAX)
			bad_argument(psprintf("metadata.%s", key),
						 psprintf("must be at most %d characters, not %d", METADATA_VALUE_MAX, pg_mbstrlen(value)));
		if (++keys > METADATA_MAX_KEYS - 1)
			bad_argument("metadata",
						 psprintf("must have at most %d keys besides user_ref (Stripe allows %d, and user_ref is one)",
								  METADATA_MAX_KEYS - 1, METADATA_MAX_KEYS));
		sb_form_append(form, psprintf("metadata[%s]", key), value);
	}
}

/*
 * Checks the Connect arguments against each other and the mode, naming
 * the argument Stripe would refuse, and appends their fields: an
 * application fee (direct charges on account, or destination charges),
 * transfer_data[destination] and on_behalf_of (destination charges, on the
 * platform).  Of the subscription's (subscription_data) or the payment's
 * (payment_intent_data), by mode.  Before any request.
 */
static void
append_connect(StringInfo form, FunctionCallInfo fcinfo, bool subscription, const char *account)
{
	const char *data = subscription ? "subscription_data" : "payment_intent_data";
	char	   *destination = ARG_GIVEN(ARG_TRANSFER_DESTINATION) ?
		text_to_cstring(PG_GETARG_TEXT_PP(ARG_TRANSFER_DESTINATION)) : NULL;
	char	   *on_behalf_of = ARG_GIVEN(ARG_ON_BEHALF_OF) ?
		text_to_cstring(PG_GETARG_TEXT_PP(ARG_ON_BEHALF_OF)) : NULL;
	const char *fee_argument = NULL;

	/* what goes into the form is a connected account's id, or nothing */
	if (destination)
		sb_check_account("transfer_destination", destination);
	if (on_behalf_of)
		sb_check_account("on_behalf_of", on_behalf_of);

	/* a destination charge is the platform's: its funds go to a connected account */
	if (account && destination)
		bad_argument("transfer_destination",
					 psprintf("is for destination charges, made on the platform: not with account (a direct charge on %s)",
							  account));
	if (account && on_behalf_of)
		bad_argument("on_behalf_of",
					 psprintf("is for charges made on the platform: not with account (a direct charge on %s, its own settlement merchant)",
							  account));
	if (destination && on_behalf_of && strcmp(destination, on_behalf_of) != 0)
		bad_argument("on_behalf_of",
					 psprintf("must be the account of transfer_destination (%s), not %s",
							  destination, on_behalf_of));

	/* an application fee: a percentage of a subscription's invoices, an amount of a payment */
	if (ARG_GIVEN(ARG_APPLICATION_FEE_PERCENT))
	{
		Numeric		percent = PG_GETARG_NUMERIC(ARG_APPLICATION_FEE_PERCENT);
		Datum		value = NumericGetDatum(percent);

		fee_argument = "application_fee_percent";
		if (!subscription)
			bad_argument(fee_argument,
						 "is for mode 'subscription' (a share of each invoice); in mode 'payment' use application_fee_amount");
		if (numeric_is_nan(percent) ||
			DatumGetBool(DirectFunctionCall2(numeric_lt, value, NumericGetDatum(int64_to_numeric(0)))) ||
			DatumGetBool(DirectFunctionCall2(numeric_gt, value, NumericGetDatum(int64_to_numeric(100)))) ||
			!DatumGetBool(DirectFunctionCall2(numeric_eq, value,
											  DirectFunctionCall2(numeric_round, value, Int32GetDatum(2)))))
			bad_argument(fee_argument,
						 psprintf("must be from 0 to 100 with at most two decimal places, not %s",
								  DatumGetCString(DirectFunctionCall1(numeric_out, value))));
		sb_form_append(form, psprintf("%s[application_fee_percent]", data),
					   DatumGetCString(DirectFunctionCall1(numeric_out, value)));
	}
	if (ARG_GIVEN(ARG_APPLICATION_FEE_AMOUNT))
	{
		int64		amount = PG_GETARG_INT64(ARG_APPLICATION_FEE_AMOUNT);

		fee_argument = "application_fee_amount";
		if (subscription)
			bad_argument(fee_argument,
						 "is for mode 'payment'; in mode 'subscription' use application_fee_percent");
		if (amount < 0)
			bad_argument(fee_argument,
						 psprintf("must be at least 0 (in the currency's smallest unit), not " INT64_FORMAT,
								  amount));
		sb_form_append(form, psprintf("%s[application_fee_amount]", data),
					   psprintf(INT64_FORMAT, amount));
	}
	/* the platform collects a fee from a connected account's charge only */
	if (fee_argument && account == NULL && destination == NULL)
		bad_argument(fee_argument,
					 "needs account (a direct charge on a connected account) or transfer_destination (a destination charge)");

	if (destination)
		sb_form_append(form, psprintf("%s[transfer_data][destination]", data), destination);
	if (on_behalf_of)
		sb_form_append(form, psprintf("%s[on_behalf_of]", data), on_behalf_of);
}

/* A string field of the returned session as text, or NULL. */
static Datum
session_text(Jsonb *session, const char *key, bool *isnull)
{
	char	   *value = sb_object_string(session, key);

	*isnull = value == NULL;
	return value ? CStringGetTextDatum(value) : (Datum) 0;
}

/* A Unix-time field of the returned session as timestamptz, or NULL. */
static Datum
session_time(Jsonb *session, const char *key, bool *isnull)
{
	JsonbValue	buf;
	JsonbValue *v = getKeyJsonValueFromContainer(&session->root, key, strlen(key), &buf);

	*isnull = v == NULL || v->type != jbvNumeric;
	if (*isnull)
		return (Datum) 0;
	return TimestampTzGetDatum(time_t_to_timestamptz((pg_time_t)
													 DatumGetInt64(DirectFunctionCall1(numeric_int8,
																					   NumericGetDatum(v->val.numeric)))));
}

/*
 * stripe_create_checkout(user_ref, price, success_url, cancel_url, quantity,
 *     mode, trial_days, allow_promotion_codes, customer_email, metadata,
 *     idempotency_key, allow_repeat_trial, application_fee_percent,
 *     application_fee_amount, transfer_destination, on_behalf_of, account,
 *     promotion_code, coupon)
 *     -> (session_id, url, expires_at, trial_granted)
 *
 * (0.1.0 declared it up to idempotency_key, 0.2.0 and 0.3.0 up to
 * allow_repeat_trial: until ALTER EXTENSION UPDATE, the arguments they lack
 * are taken as NULL.)
 *
 * The session is account's (Stripe-Account; NULL: the platform's), and so
 * is the customer used and the trial looked for.
 *
 * Uses the user's known customer, else customer_email; puts user_ref in
 * client_reference_id and in the session's and the subscription's (or
 * payment's) metadata, which is how the completed session finds the user.
 * In payment mode without a known customer, Checkout is asked to create
 * one (customer_creation=always), so that the payment links the user to a
 * customer.  One trial per user: trial_days is left out for a user who
 * already had a trial (any subscription of theirs, whatever its status),
 * unless allow_repeat_trial; trial_granted says whether it was asked for.
 * A promotion code (its promo_ id, or the code a customer types) or a
 * coupon id is the session's discount (append_discount).
 */
Datum
stripe_create_checkout(PG_FUNCTION_ARGS)
{
	char	   *account = sb_account_arg(fcinfo, ARG_ACCOUNT);
	char	   *user_ref = required_text(fcinfo, ARG_USER_REF, "user_ref");
	char	   *price = required_text(fcinfo, ARG_PRICE, "price");
	char	   *success_url = required_text(fcinfo, ARG_SUCCESS_URL, "success_url");
	char	   *cancel_url = required_text(fcinfo, ARG_CANCEL_URL, "cancel_url");
	char	   *mode = PG_ARGISNULL(ARG_MODE) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(ARG_MODE));
	char	   *customer_email = optional_text(fcinfo, ARG_CUSTOMER_EMAIL);
	char	   *idempotency_key = optional_text(fcinfo, ARG_IDEMPOTENCY_KEY);
	bool		allow_repeat_trial = ARG_GIVEN(ARG_ALLOW_REPEAT_TRIAL) &&
		PG_GETARG_BOOL(ARG_ALLOW_REPEAT_TRIAL);
	bool		subscription;
	bool		had_trial;
	bool		trial_granted = false;
	char	   *customer;
	StringInfoData form;
	Jsonb	   *session;
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4];

	if (pg_mbstrlen(user_ref) > CLIENT_REFERENCE_ID_MAX)
		bad_argument("user_ref",
					 psprintf("must be at most %d characters (Stripe's limit for client_reference_id), not %d",
							  CLIENT_REFERENCE_ID_MAX, pg_mbstrlen(user_ref)));
	if (PG_ARGISNULL(ARG_QUANTITY) || PG_GETARG_INT32(ARG_QUANTITY) < 1)
		bad_argument("quantity", "must be at least 1");
	if (mode == NULL || (strcmp(mode, "subscription") != 0 && strcmp(mode, "payment") != 0))
		bad_argument("mode", "must be 'subscription' or 'payment'");
	subscription = strcmp(mode, "subscription") == 0;
	if (!PG_ARGISNULL(ARG_TRIAL_DAYS) &&
		(PG_GETARG_INT32(ARG_TRIAL_DAYS) < 1 || PG_GETARG_INT32(ARG_TRIAL_DAYS) > 730 || !subscription))
		bad_argument("trial_days", "must be from 1 to 730, for mode 'subscription' only");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "stripe_create_checkout must return a composite type");

	initStringInfo(&form);
	sb_form_append(&form, "mode", mode);
	sb_form_append(&form, "line_items[0][price]", price);
	sb_form_append(&form, "line_items[0][quantity]",
				   psprintf("%d", PG_GETARG_INT32(ARG_QUANTITY)));
	sb_form_append(&form, "success_url", success_url);
	sb_form_append(&form, "cancel_url", cancel_url);
	sb_form_append(&form, "client_reference_id", user_ref);
	if (!PG_ARGISNULL(ARG_METADATA))
		append_metadata(&form, PG_GETARG_JSONB_P(ARG_METADATA));
	sb_form_append(&form, "metadata[user_ref]", user_ref);
	append_connect(&form, fcinfo, subscription, account);

	customer = user_facts(user_ref, account, PG_NARGS() > ARG_ALLOW_REPEAT_TRIAL, &had_trial);
	if (customer)
		sb_form_append(&form, "customer", customer);
	else if (customer_email)
		sb_form_append(&form, "customer_email", customer_email);
	if (!PG_ARGISNULL(ARG_ALLOW_PROMOTION_CODES) && PG_GETARG_BOOL(ARG_ALLOW_PROMOTION_CODES))
		sb_form_append(&form, "allow_promotion_codes", "true");
	append_discount(&form, fcinfo, account);
	if (subscription)
	{
		sb_form_append(&form, "subscription_data[metadata][user_ref]", user_ref);
		trial_granted = !PG_ARGISNULL(ARG_TRIAL_DAYS) && (!had_trial || allow_repeat_trial);
		if (trial_granted)
			sb_form_append(&form, "subscription_data[trial_period_days]",
						   psprintf("%d", PG_GETARG_INT32(ARG_TRIAL_DAYS)));
	}
	else
	{
		sb_form_append(&form, "payment_intent_data[metadata][user_ref]", user_ref);
		if (customer == NULL)
			sb_form_append(&form, "customer_creation", "always");
	}

	session = sb_stripe_call_form("POST", "/v1/checkout/sessions", form.data, idempotency_key, account);

	if (!JB_ROOT_IS_OBJECT(session))
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API request POST /v1/checkout/sessions returned no object")));
	values[0] = session_text(session, "id", &nulls[0]);
	values[1] = session_text(session, "url", &nulls[1]);
	values[2] = session_time(session, "expires_at", &nulls[2]);
	values[3] = BoolGetDatum(trial_granted);
	nulls[3] = false;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
