/*-------------------------------------------------------------------------
 *
 * kinds.c
 *	  The kinds of Stripe object that events are mapped from, each declared
 *	  once: the events that carry it, the SQL function that applies it, the
 *	  fields that function reads, and the keys applying it locks.
 *
 * The ledger (events.c) maps an event when its type and its object's kind
 * match a row here, the shape check (shapes.c) validates the row's fields
 * before the apply function runs, and locks.c takes the row's keys first.
 * Every field an _apply_* function reads must be listed in its kind's
 * fields: the regression test object_kinds reads the functions' source
 * through stripe_billing._object_kinds() and fails on one that is not.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "stripe_billing.h"
#include "kinds.h"

PG_FUNCTION_INFO_V1(stripe_object_kinds);
PG_FUNCTION_INFO_V1(stripe_thin_mapping);

/* The fields _user_ref() reads from metadata. */
#define USER_REF_FIELDS \
	{"metadata.user_ref", J_STR | J_REF, false}, \
	{"metadata.user_id", J_STR | J_REF, false}, \
	{"metadata.userId", J_STR | J_REF, false}

/* The list of a subscription's items, as embedded in the subscription. */
#define ITEM_FIELDS(prefix) \
	{prefix "id", J_STR | J_KEY | J_UNIQUE, true}, \
	{prefix "quantity", J_INT, false}, \
	{prefix "current_period_start", J_TIME, false}, \
	{prefix "current_period_end", J_TIME, false}, \
	{prefix "price", J_OBJ, false}, \
	{prefix "price.id", J_STR | J_KEY, true}, \
	{prefix "price.product", J_ID, false}, \
	{prefix "price.lookup_key", J_STR | J_KEY, false}, \
	{prefix "plan", J_OBJ, false}, \
	{prefix "plan.id", J_STR | J_KEY, true}, \
	{prefix "plan.product", J_ID, false}

/*
 * A discount (customer.discount.*, a customer's own).  Before API version
 * 2020-08-27 a discount had no id (one embedded in a customer may lack it);
 * before 2025-09-30.clover its coupon was the coupon object, since then
 * source.coupon.
 */
#define DISCOUNT_FIELDS(prefix, id_required) \
	{prefix "id", J_STR | J_KEY, id_required}, \
	{prefix "customer", J_ID, false}, \
	{prefix "subscription", J_ID, false}, \
	{prefix "subscription_item", J_ID, false}, \
	{prefix "invoice", J_ID, false}, \
	{prefix "invoice_item", J_ID, false}, \
	{prefix "checkout_session", J_ID, false}, \
	{prefix "coupon", J_ID, false}, \
	{prefix "source", J_OBJ, false}, \
	{prefix "source.coupon", J_ID, false}, \
	{prefix "promotion_code", J_ID, false}, \
	{prefix "start", J_TIME, false}, \
	{prefix "end", J_TIME, false}, \
	{prefix "deleted", J_BOOL, false}

/* The discounts of a subscription or an invoice: ids (or the one before). */
#define DISCOUNT_ID_FIELDS \
	{"discounts", J_ARR, false}, \
	{"discounts[]", J_ID, false}, \
	{"discount", J_OBJ, false}, \
	{"discount.id", J_STR | J_KEY, false}

static const SbField customer_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"email", J_STR, false},
	{"name", J_STR, false},
	{"deleted", J_BOOL, false},
	{"metadata", J_OBJ, false},
	USER_REF_FIELDS,
	{"created", J_TIME, false},
	{"invoice_settings", J_OBJ, false},
	{"invoice_settings.default_payment_method", J_ID, false},
	{"discount", J_OBJ, false},
	DISCOUNT_FIELDS("discount.", false),
	{NULL}
};

static const SbField product_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"name", J_STR, false},
	{"description", J_STR, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField price_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"product", J_ID, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"currency", J_STR, false},
	{"unit_amount", J_INT, false},
	{"type", J_STR, false},
	{"recurring", J_OBJ, false},
	{"recurring.interval", J_STR, false},
	{"recurring.interval_count", J_INT4, false},
	{"recurring.usage_type", J_STR, false},
	{"lookup_key", J_STR | J_KEY, false},
	{"nickname", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField plan_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"product", J_ID, false},
	{"active", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"currency", J_STR, false},
	{"amount", J_INT, false},
	{"interval", J_STR, false},
	{"interval_count", J_INT4, false},
	{"usage_type", J_STR, false},
	{"lookup_key", J_STR | J_KEY, false},
	{"nickname", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField subscription_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, true},
	{"status", J_STR, true},
	{"cancel_at_period_end", J_BOOL, false},
	{"cancel_at", J_TIME, false},
	{"canceled_at", J_TIME, false},
	{"ended_at", J_TIME, false},
	{"current_period_start", J_TIME, false},
	{"current_period_end", J_TIME, false},
	{"trial_start", J_TIME, false},
	{"trial_end", J_TIME, false},
	{"pause_collection", J_OBJ, false},
	{"pause_collection.behavior", J_STR, false},
	{"pause_collection.resumes_at", J_TIME, false},
	{"latest_invoice", J_ID, false},
	{"metadata", J_OBJ, false},
	USER_REF_FIELDS,
	{"created", J_TIME, false},
	{"items", J_OBJ, true},
	{"items.data", J_ARR, true},
	{"items.has_more", J_BOOL, false},
	ITEM_FIELDS("items.data[]."),
	DISCOUNT_ID_FIELDS,
	{NULL}
};

static const SbField invoice_fields[] = {
	{"id", J_STR | J_KEY, true},
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
	{"attempt_count", J_INT4, false},
	{"next_payment_attempt", J_TIME, false},
	{"hosted_invoice_url", J_STR, false},
	{"invoice_pdf", J_STR, false},
	{"period_start", J_TIME, false},
	{"period_end", J_TIME, false},
	{"billing_reason", J_STR, false},
	{"created", J_TIME, false},
	DISCOUNT_ID_FIELDS,
	{NULL}
};

static const SbField invoice_payment_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"invoice", J_ID, true},
	{"customer", J_ID, false},
	{"amount_paid", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"payment", J_OBJ, false},
	{"payment.payment_intent", J_ID, false},
	{"payment.charge", J_ID, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField payment_intent_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, false},
	{"invoice", J_ID, false},
	{"amount", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"last_payment_error", J_OBJ, false},
	{"last_payment_error.code", J_STR, false},
	{"last_payment_error.message", J_STR, false},
	{"created", J_TIME, false},
	{NULL}
};

#define REFUND_FIELDS(prefix) \
	{prefix "id", J_STR | J_KEY, true}, \
	{prefix "customer", J_ID, false}, \
	{prefix "charge", J_ID, false}, \
	{prefix "payment_intent", J_ID, false}, \
	{prefix "amount", J_INT, false}, \
	{prefix "currency", J_STR, false}, \
	{prefix "status", J_STR, false}, \
	{prefix "failure_reason", J_STR, false}, \
	{prefix "created", J_TIME, false}

static const SbField charge_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, false},
	{"invoice", J_ID, false},
	{"payment_intent", J_ID, false},
	{"amount", J_INT, false},
	{"amount_refunded", J_INT, false},
	{"currency", J_STR, false},
	{"status", J_STR, false},
	{"failure_code", J_STR, false},
	{"failure_message", J_STR, false},
	{"created", J_TIME, false},
	{"refunds", J_OBJ, false},
	{"refunds.data", J_ARR, false},
	REFUND_FIELDS("refunds.data[]."),
	{NULL}
};

static const SbField refund_fields[] = {
	REFUND_FIELDS(""),
	{NULL}
};

static const SbField checkout_session_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"client_reference_id", J_STR | J_REF, false},
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
	{"expires_at", J_TIME, false},
	{"metadata", J_OBJ, false},
	USER_REF_FIELDS,
	{"created", J_TIME, false},
	{NULL}
};

static const SbField entitlement_summary_fields[] = {
	{"customer", J_STR | J_KEY, true},
	{"entitlements", J_OBJ, true},
	{"entitlements.data", J_ARR, true},
	{"entitlements.has_more", J_BOOL, false},
	{"entitlements.data[].id", J_STR, false},
	{"entitlements.data[].feature", J_ID, true},
	{"entitlements.data[].lookup_key", J_STR | J_KEY, true},
	{NULL}
};

/* The metadata keys that name the application's user (_user_ref()). */
#define USER_REF_PATHS "metadata.user_ref", "metadata.user_id", "metadata.userId"

static const SbField account_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"business_profile", J_OBJ, false},
	{"business_profile.name", J_STR, false},
	{"country", J_STR, false},
	{"default_currency", J_STR, false},
	{"charges_enabled", J_BOOL, false},
	{"payouts_enabled", J_BOOL, false},
	{"details_submitted", J_BOOL, false},
	{"requirements", J_OBJ, false},
	{"requirements.currently_due", J_ARR, false},
	{"type", J_STR, false},
	{"controller", J_OBJ, false},
	{"controller.type", J_STR, false},
	{"created", J_TIME, false},
	{NULL}
};

/*
 * A connected account as an Accounts v2 object (v2.core.account.* thin
 * events): what stripe_billing.accounts keeps of it.
 */
static const SbField v2_account_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"display_name", J_STR, false},
	{"identity", J_OBJ, false},
	{"identity.country", J_STR, false},
	{"identity.business_details", J_OBJ, false},
	{"identity.business_details.registered_name", J_STR, false},
	{"defaults", J_OBJ, false},
	{"defaults.currency", J_STR, false},
	{"defaults.responsibilities", J_OBJ, false},
	{"configuration", J_OBJ, false},
	{"configuration.merchant", J_OBJ, false},
	{"configuration.merchant.capabilities", J_OBJ, false},
	{"configuration.merchant.capabilities.card_payments", J_OBJ, false},
	{"configuration.merchant.capabilities.card_payments.status", J_STR, false},
	{"configuration.merchant.capabilities.stripe_balance", J_OBJ, false},
	{"configuration.merchant.capabilities.stripe_balance.payouts", J_OBJ, false},
	{"configuration.merchant.capabilities.stripe_balance.payouts.status", J_STR, false},
	{"requirements", J_OBJ, false},
	{"requirements.entries", J_ARR, false},
	{"requirements.entries[].description", J_STR, false},
	{"requirements.entries[].minimum_deadline", J_OBJ, false},
	{"requirements.entries[].minimum_deadline.status", J_STR, false},
	{"dashboard", J_STR, false},
	{"created", J_STR, false},
	{NULL}
};

/* (nothing of the application is kept: the event's account is what counts) */
static const SbField application_fields[] = {
	{"id", J_STR | J_KEY, false},
	{NULL}
};

/*
 * Subscription schedules (plan changes at a later date): the schedule and
 * its phases, each phase's prices (one row per price of a phase, so a price
 * appears once in a phase).
 */
static const SbField subscription_schedule_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, false},
	{"subscription", J_ID, false},
	{"released_subscription", J_ID, false},
	{"status", J_STR, true},
	{"end_behavior", J_STR, false},
	{"current_phase", J_OBJ, false},
	{"current_phase.start_date", J_TIME, false},
	{"current_phase.end_date", J_TIME, false},
	{"released_at", J_TIME, false},
	{"canceled_at", J_TIME, false},
	{"completed_at", J_TIME, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{"phases", J_ARR, true},
	{"phases[].start_date", J_TIME, true},
	{"phases[].end_date", J_TIME, false},
	{"phases[].trial_end", J_TIME, false},
	{"phases[].proration_behavior", J_STR, false},
	{"phases[].items", J_ARR, true},
	{"phases[].items[].price", J_ID | J_UNIQUE, true},
	{"phases[].items[].quantity", J_INT, false},
	{NULL}
};

/*
 * The rest of the billing model (issue 27, part B): discounts, disputes,
 * credit notes, payment methods, tax ids.
 */
static const SbField coupon_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"name", J_STR, false},
	{"percent_off", J_NUM, false},
	{"amount_off", J_INT, false},
	{"currency", J_STR, false},
	{"duration", J_STR, false},
	{"duration_in_months", J_INT4, false},
	{"max_redemptions", J_INT, false},
	{"times_redeemed", J_INT, false},
	{"redeem_by", J_TIME, false},
	{"valid", J_BOOL, false},
	{"deleted", J_BOOL, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

/* (its coupon: promotion.coupon since 2025-09-30.clover, the coupon object before) */
static const SbField promotion_code_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"code", J_STR, false},
	{"promotion", J_OBJ, false},
	{"promotion.coupon", J_ID, false},
	{"coupon", J_ID, false},
	{"customer", J_ID, false},
	{"active", J_BOOL, false},
	{"expires_at", J_TIME, false},
	{"max_redemptions", J_INT, false},
	{"times_redeemed", J_INT, false},
	{"restrictions", J_OBJ, false},
	{"restrictions.first_time_transaction", J_BOOL, false},
	{"restrictions.minimum_amount", J_INT, false},
	{"restrictions.minimum_amount_currency", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField discount_fields[] = {
	DISCOUNT_FIELDS("", true),
	{NULL}
};

static const SbField dispute_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"charge", J_ID, true},
	{"charge.customer", J_ID | J_EXPANDED, false},
	{"payment_intent", J_ID, false},
	{"amount", J_INT, false},
	{"currency", J_STR, false},
	{"reason", J_STR, false},
	{"status", J_STR, false},
	{"is_charge_refundable", J_BOOL, false},
	{"evidence_details", J_OBJ, false},
	{"evidence_details.due_by", J_TIME, false},
	{"intended_submission_method", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

/* (its refunds: refunds[].refund, or refund before 2025-03-31.basil) */
static const SbField credit_note_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"invoice", J_ID, false},
	{"customer", J_ID, false},
	{"number", J_STR, false},
	{"status", J_STR, false},
	{"type", J_STR, false},
	{"reason", J_STR, false},
	{"amount", J_INT, false},
	{"subtotal", J_INT, false},
	{"total", J_INT, false},
	{"discount_amount", J_INT, false},
	{"out_of_band_amount", J_INT, false},
	{"currency", J_STR, false},
	{"refunds", J_ARR, false},
	{"refunds[].refund", J_ID, false},
	{"refund", J_ID, false},
	{"memo", J_STR, false},
	{"effective_at", J_TIME, false},
	{"voided_at", J_TIME, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

/* (never a card number: Stripe sends none) */
static const SbField payment_method_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, false},
	{"type", J_STR, false},
	{"card", J_OBJ, false},
	{"card.brand", J_STR, false},
	{"card.last4", J_STR, false},
	{"card.exp_month", J_INT4, false},
	{"card.exp_year", J_INT4, false},
	{"card.funding", J_STR, false},
	{"card.country", J_STR, false},
	{"metadata", J_OBJ, false},
	{"created", J_TIME, false},
	{NULL}
};

static const SbField tax_id_fields[] = {
	{"id", J_STR | J_KEY, true},
	{"customer", J_ID, false},
	{"owner", J_OBJ, false},
	{"owner.customer", J_ID, false},
	{"type", J_STR, false},
	{"value", J_STR, false},
	{"country", J_STR, false},
	{"verification", J_OBJ, false},
	{"verification.status", J_STR, false},
	{"deleted", J_BOOL, false},
	{"created", J_TIME, false},
	{NULL}
};

const SbObjectKind sb_object_kinds[] = {
	{
		.name = "customer",
		.event_types = {"customer.created", "customer.updated", "customer.deleted"},
		.apply_function = "_apply_customer",
		.apply_takes_type = true,
		.fields = customer_fields,
		/* (its own discount, applied with it) */
		.row_kind = "discount",
		.row_ids = {"discount.id"},
		.customer = "id",
		.user_refs = {USER_REF_PATHS},
	},
	{
		.name = "product",
		.event_types = {"product."},
		.apply_function = "_apply_product",
		.apply_takes_type = true,
		.fields = product_fields,
		.row_kind = "product",
		.row_ids = {"id"},
	},
	{
		.name = "price",
		.event_types = {"price."},
		.apply_function = "_apply_price",
		.apply_takes_type = true,
		.fields = price_fields,
		.row_kind = "price",
		.row_ids = {"id"},
	},
	{
		/* (the older form of a price, written as one) */
		.name = "plan",
		.event_types = {"plan."},
		.apply_function = "_apply_price",
		.apply_takes_type = true,
		.fields = plan_fields,
		.row_kind = "price",
		.row_ids = {"id"},
	},
	{
		.name = "subscription",
		.event_types = {"customer.subscription."},
		/* (its subscription is applied too) */
		.notice_types = {"customer.subscription.trial_will_end"},
		.apply_function = "_apply_subscription",
		.apply_takes_type = true,
		.fields = subscription_fields,
		.row_kind = "subscription",
		.row_ids = {"id"},
		.customer = "customer",
		.user_refs = {USER_REF_PATHS},
	},
	{
		.name = "invoice",
		.event_types = {"invoice."},
		/* a preview without an id: nothing to keep */
		.ignored_types = {"invoice.upcoming"},
		.notice_types = {"invoice.upcoming"},
		.apply_function = "_apply_invoice",
		.apply_takes_type = true,
		.fields = invoice_fields,
		.row_kind = "invoice",
		.row_ids = {"id"},
	},
	/* payments: one table, so one kind of row for their keys */
	{
		.name = "payment_intent",
		.event_types = {"payment_intent."},
		.apply_function = "_apply_payment",
		.fields = payment_intent_fields,
		.row_kind = "payment",
		.row_ids = {"id"},
	},
	{
		.name = "charge",
		.event_types = {"charge."},
		.apply_function = "_apply_payment",
		.fields = charge_fields,
		.row_kind = "payment",
		/* (the refunds it lists are applied with it) */
		.row_ids = {"id", "refunds.data[].id"},
		/* (its disputes applied before it learn its customer) */
		.customer = "customer",
	},
	{
		/* (charge.refund.updated carries a refund; charge.dispute.* a dispute) */
		.name = "refund",
		.event_types = {"refund.", "charge."},
		.apply_function = "_apply_payment",
		.fields = refund_fields,
		.row_kind = "payment",
		.row_ids = {"id"},
	},
	{
		.name = "invoice_payment",
		.event_types = {"invoice_payment.paid"},
		.apply_function = "_apply_payment",
		.fields = invoice_payment_fields,
		.row_kind = "payment",
		/* (it tells its payment which invoice it paid) */
		.row_ids = {"id", "payment.payment_intent", "payment.charge"},
	},
	{
		.name = "checkout.session",
		.event_types = {"checkout.session."},
		.apply_function = "_apply_checkout_session",
		.apply_takes_type = true,
		.fields = checkout_session_fields,
		.row_kind = "checkout.session",
		.row_ids = {"id"},
		.customer = "customer",
		.user_refs = {"client_reference_id", USER_REF_PATHS},
	},
	{
		/* replaces the customer's set of entitlements */
		.name = "entitlements.active_entitlement_summary",
		.event_types = {"entitlements.active_entitlement_summary.updated"},
		.apply_function = "_apply_entitlement_summary",
		.apply_takes_type = true,
		.fields = entitlement_summary_fields,
		.customer = "customer",
	},
	{
		/* a connected account (Connect), from account.updated or a listing */
		.name = "account",
		.event_types = {"account.updated"},
		.apply_function = "_apply_account",
		.apply_takes_type = true,
		.fields = account_fields,
		.row_kind = "account",
		.row_ids = {"id"},
	},
	{
		/*
		 * a connected account as Accounts v2 shows it: the related object of
		 * the v2.core.account.* thin events (thin.c), never a snapshot event's
		 */
		.name = "v2.core.account",
		.event_types = {"v2.core.account."},
		.apply_function = "_apply_v2_account",
		.apply_takes_type = true,
		.fields = v2_account_fields,
		.row_kind = "account",
		.row_ids = {"id"},
	},
	{
		/* the platform's application, authorized or not by the event's account */
		.name = "application",
		.event_types = {"account.application."},
		.apply_function = "_apply_account_application",
		.apply_takes_type = true,
		.fields = application_fields,
	},
	/* ---- subscription schedules (issue 27, part A) ---- */
	{
		/* a schedule's phases; the subscription event changes features */
		.name = "subscription_schedule",
		.event_types = {"subscription_schedule."},
		.apply_function = "_apply_subscription_schedule",
		.apply_takes_type = true,
		.fields = subscription_schedule_fields,
		.row_kind = "subscription_schedule",
		.row_ids = {"id"},
	},

	/* The rest of the billing model (issue 27, part B) */
	{
		/* (its id is the account's choice: keyed with the account, locks.c) */
		.name = "coupon",
		.event_types = {"coupon."},
		.apply_function = "_apply_coupon",
		.apply_takes_type = true,
		.fields = coupon_fields,
		.row_kind = "coupon",
		.row_ids = {"id"},
	},
	{
		.name = "promotion_code",
		.event_types = {"promotion_code."},
		.apply_function = "_apply_promotion_code",
		.apply_takes_type = true,
		.fields = promotion_code_fields,
		.row_kind = "promotion_code",
		.row_ids = {"id"},
	},
	{
		.name = "discount",
		.event_types = {"customer.discount."},
		.apply_function = "_apply_discount",
		.apply_takes_type = true,
		.fields = discount_fields,
		.row_kind = "discount",
		.row_ids = {"id"},
	},
	{
		/*
		 * (charge.dispute.*: its charge's key, which the charge's own
		 * units take, and the charge's customer: expanded, or read from
		 * the charge's row, or the one the dispute's row has)
		 */
		.name = "dispute",
		.event_types = {"charge.dispute."},
		.apply_function = "_apply_dispute",
		.apply_takes_type = true,
		.fields = dispute_fields,
		.row_kind = "payment",
		.row_ids = {"id", "charge"},
		.customer = "charge.customer",
		.customers_of_rows = {{"payments", "charge"}, {"disputes", "id"}},
	},
	{
		.name = "credit_note",
		.event_types = {"credit_note."},
		.apply_function = "_apply_credit_note",
		.apply_takes_type = true,
		.fields = credit_note_fields,
		.row_kind = "credit_note",
		.row_ids = {"id"},
	},
	{
		.name = "payment_method",
		.event_types = {"payment_method."},
		.apply_function = "_apply_payment_method",
		.apply_takes_type = true,
		.fields = payment_method_fields,
		.row_kind = "payment_method",
		.row_ids = {"id"},
	},
	{
		.name = "tax_id",
		.event_types = {"customer.tax_id."},
		.apply_function = "_apply_tax_id",
		.apply_takes_type = true,
		.fields = tax_id_fields,
		.row_kind = "tax_id",
		.row_ids = {"id"},
	},
};

StaticAssertDecl(lengthof(sb_object_kinds) == SB_NUM_OBJECT_KINDS,
				 "SB_NUM_OBJECT_KINDS must count sb_object_kinds");

/* The kind of this name, or NULL when objects of it are not mapped. */
const SbObjectKind *
sb_object_kind(const char *name)
{
	for (int i = 0; i < SB_NUM_OBJECT_KINDS; i++)
		if (strcmp(sb_object_kinds[i].name, name) == 0)
			return &sb_object_kinds[i];
	return NULL;
}

/* Does an event type match a pattern (an exact type, or a prefix ending in '.')? */
static bool
event_type_matches(const char *type, const char *pattern)
{
	size_t		len = strlen(pattern);

	if (pattern[len - 1] == '.')
		return strncmp(type, pattern, len) == 0;
	return strcmp(type, pattern) == 0;
}

/* Do events of this type carry objects of this kind to keep? */
static bool
kind_maps_event_type(const SbObjectKind *kind, const char *type)
{
	bool		matched = false;

	for (int i = 0; i < lengthof(kind->event_types) && kind->event_types[i] && !matched; i++)
		matched = event_type_matches(type, kind->event_types[i]);
	for (int i = 0; i < lengthof(kind->ignored_types) && kind->ignored_types[i] && matched; i++)
		matched = strcmp(type, kind->ignored_types[i]) != 0;
	return matched;
}

/*
 * Is an event of this type whose object is of this kind mapped onto the
 * billing tables?  An object without a kind (NULL) is mapped, and will fail
 * naming data.object.object, when some kind's events have this type.
 */
bool
sb_event_type_is_mapped(const char *type, const char *kind)
{
	if (kind != NULL)
	{
		const SbObjectKind *k = sb_object_kind(kind);

		return k != NULL && kind_maps_event_type(k, type);
	}
	for (int i = 0; i < SB_NUM_OBJECT_KINDS; i++)
		if (kind_maps_event_type(&sb_object_kinds[i], type))
			return true;
	return false;
}

/*
 * What a thin event of this type asks for (its related object of type
 * related_type, NULL when it names none): see SbThinAction.  *kind is set
 * to the kind of object applied (sb_object_kinds) for the actions that
 * apply one, else NULL; the snapshot type the mapping is given is the
 * thin type without its "v1." (for v2.core.account, the type itself).
 */
SbThinAction
sb_thin_action(const char *type, const char *related_type, const char **kind)
{
	*kind = NULL;
	if (strcmp(type, "v2.core.event_destination.ping") == 0)
		return SB_THIN_PING;
	if (strcmp(type, "v1.billing.meter.error_report_triggered") == 0 ||
		strcmp(type, "v1.billing.meter.no_meter_found") == 0)
		return SB_THIN_METER_ERRORS;
	/* Accounts v2 (Connect): v2.core.account.updated, v2.core.account[identity].updated, ... */
	if ((strncmp(type, "v2.core.account.", 16) == 0 || strncmp(type, "v2.core.account[", 16) == 0) &&
		(related_type == NULL || strcmp(related_type, "v2.core.account") == 0))
	{
		*kind = "v2.core.account";
		return SB_THIN_OBJECT;
	}
	if (strncmp(type, "v1.", 3) == 0)
	{
		const char *snapshot_type = type + 3;

		if (related_type != NULL)
		{
			if (!sb_event_type_is_mapped(snapshot_type, related_type))
				return SB_THIN_IGNORED;
			*kind = sb_object_kind(related_type)->name;
		}
		else
		{
			/* no related object: the kind its snapshot events carry */
			for (int i = 0; i < SB_NUM_OBJECT_KINDS && *kind == NULL; i++)
				if (kind_maps_event_type(&sb_object_kinds[i], snapshot_type))
					*kind = sb_object_kinds[i].name;
			if (*kind == NULL)
				return SB_THIN_IGNORED;
			if (strcmp(*kind, "application") != 0)
				return SB_THIN_SNAPSHOT_EVENT;
		}
		/* the application's events name their account, not an object to fetch */
		return strcmp(*kind, "application") == 0 ? SB_THIN_APPLICATION : SB_THIN_OBJECT;
	}
	return SB_THIN_IGNORED;
}

/* The outcome a thin event of this type is recorded with on receipt. */
const char *
sb_thin_receive_outcome(const char *type, const char *related_type)
{
	const char *kind;

	switch (sb_thin_action(type, related_type, &kind))
	{
		case SB_THIN_IGNORED:
			return "ignored";
		case SB_THIN_PING:
			return "applied";
		default:
			return "pending";
	}
}

/*
 * stripe_billing._thin_mapping(type text, related_type text,
 *                              OUT action text, OUT kind text)
 *
 * sb_thin_action, for the worker's fetches (stripe_billing._thin_fetch_one):
 * action is ignored, ping, object, snapshot_event, application or
 * meter_errors.
 */
Datum
stripe_thin_mapping(PG_FUNCTION_ARGS)
{
	static const char *const names[] = {"ignored", "ping", "object", "snapshot_event",
	"application", "meter_errors"};
	const char *kind;
	SbThinAction action;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("type must not be NULL")));
	action = sb_thin_action(text_to_cstring(PG_GETARG_TEXT_PP(0)),
							PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)), &kind);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	StaticAssertStmt(lengthof(names) == SB_THIN_METER_ERRORS + 1, "one name per SbThinAction");
	values[0] = CStringGetTextDatum(names[action]);
	values[1] = kind ? CStringGetTextDatum(kind) : (Datum) 0;
	nulls[1] = kind == NULL;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * Is an event of this type, whose object is of this kind, announced to the
 * application when it is first recorded (an upcoming invoice, a trial about
 * to end)?  Such events have no row of their own to watch.
 */
bool
sb_event_type_is_notice(const char *type, const char *kind)
{
	const SbObjectKind *k;

	if (kind == NULL || (k = sb_object_kind(kind)) == NULL)
		return false;
	for (int i = 0; i < lengthof(k->notice_types) && k->notice_types[i]; i++)
		if (strcmp(type, k->notice_types[i]) == 0)
			return true;
	return false;
}

/* A text[] of the non-NULL strings among the first n of strings. */
static Datum
text_array(const char *const *strings, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			nelems = 0;

	for (int i = 0; i < n && strings[i]; i++)
		elems[nelems++] = CStringGetTextDatum(strings[i]);
	return PointerGetDatum(construct_array_builtin(elems, nelems, TEXTOID));
}

/*
 * stripe_billing._object_kinds() -> setof (kind, event_types,
 * ignored_event_types, apply_function, fields, notice_event_types)
 *
 * The table above, for tests (object_kinds) and for inspection.
 */
Datum
stripe_object_kinds(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < SB_NUM_OBJECT_KINDS; i++)
	{
		const SbObjectKind *kind = &sb_object_kinds[i];
		const char **paths;
		int			npaths = 0;
		Datum		values[6];
		bool		nulls[6] = {false};

		while (kind->fields[npaths].path)
			npaths++;
		paths = palloc(sizeof(char *) * Max(npaths, 1));
		for (int j = 0; j < npaths; j++)
			paths[j] = kind->fields[j].path;
		values[0] = CStringGetTextDatum(kind->name);
		values[1] = text_array(kind->event_types, lengthof(kind->event_types));
		values[2] = text_array(kind->ignored_types, lengthof(kind->ignored_types));
		values[3] = CStringGetTextDatum(kind->apply_function);
		values[4] = text_array(paths, npaths);
		values[5] = text_array(kind->notice_types, lengthof(kind->notice_types));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
