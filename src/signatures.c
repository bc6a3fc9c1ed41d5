/*-------------------------------------------------------------------------
 *
 * signatures.c
 *	  Verification of Stripe webhook signatures (the Stripe-Signature header).
 *
 * The scheme is exactly the official SDKs': the header is a comma-separated
 * list of key=value items; "t" is the signing time in Unix seconds and every
 * "v1" is a lowercase hex HMAC-SHA256, keyed with the whole "whsec_..."
 * string, over "<t>.<raw payload bytes>".  Any v1 may match (Stripe sends
 * several while a secret is being rolled); other schemes are ignored.  A
 * timestamp older than the tolerance is refused; future ones are accepted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

#define SHA256_HEX_LEN	64
#define SIGNATURE_SCHEME "v1"

/*
 * The work of a verification is secrets x signatures HMAC comparisons; any
 * role may call stripe_verify_signature, so both counts are capped (Stripe
 * sends one or two v1 signatures, and a rotation needs two secrets).
 */
#define MAX_SECRETS		16
#define MAX_SIGNATURES	64

typedef enum SignatureStatus
{
	SIGNATURE_VALID,
	SIGNATURE_NO_HEADER,
	SIGNATURE_NO_TIMESTAMP,
	SIGNATURE_NO_V1,
	SIGNATURE_MISMATCH,
	SIGNATURE_TOO_OLD
} SignatureStatus;

/* Longest value of a diagnostics item kept (secret=, destination=). */
#define DIAGNOSTIC_VALUE_MAX 64

/*
 * What verification learnt, for the error messages.  Stripe's header may
 * carry diagnostics items besides t and v1 (event destinations): secret=
 * (the destination's signing secret, masked), destination= (its id) and
 * payload= (the last 8 hex digits of the SHA-256 of the body it sent).  On
 * a mismatch they tell which of the two went wrong: the body, or the
 * secrets.  Only the first of each is kept, and only when it is printable
 * ASCII and short; the values come from the request, so they are shown
 * only as such.
 */
typedef struct SignatureReport
{
	int64		timestamp;
	int			nsignatures;
	int			nsecrets;
	char		secret[DIAGNOSTIC_VALUE_MAX + 1];	/* masked, or "" */
	char		destination[DIAGNOSTIC_VALUE_MAX + 1];	/* or "" */
	char		payload[8 + 1];	/* 8 lowercase hex digits, or "" */
	/* on a mismatch: */
	char		body_tail[8 + 1];	/* the body's SHA-256, last 8 hex digits */
	int			secret_likeness;	/* 1: a configured secret looks like
									 * secret=, 0: none does, -1: unknown */
} SignatureReport;

/*
 * HMAC contexts already keyed, per backend.  Webhooks are verified with the
 * same few secrets over and over; re-initialising a keyed context skips the
 * provider look-ups and key schedule that dominate small payloads.
 */
#define MAC_CACHE_SIZE 4

typedef struct MacCacheEntry
{
	char	   *key;			/* in TopMemoryContext */
	size_t		keylen;
	EVP_MAC_CTX *ctx;			/* OpenSSL-allocated */
} MacCacheEntry;

static MacCacheEntry mac_cache[MAC_CACHE_SIZE];
static int	mac_cache_next = 0;
static EVP_MAC *hmac_algorithm = NULL;

PG_FUNCTION_INFO_V1(stripe_verify_signature);
PG_FUNCTION_INFO_V1(stripe_verify_signature_any);
PG_FUNCTION_INFO_V1(stripe_check_signature);
PG_FUNCTION_INFO_V1(stripe_check_signature_any);

/* Reports an OpenSSL failure; never includes key material. */
static void
openssl_failure(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("OpenSSL failed to %s", what)));
}

/* Returns an HMAC-SHA256 context keyed with key, ready for updates. */
static EVP_MAC_CTX *
keyed_mac(const char *key, size_t keylen)
{
	MacCacheEntry *entry;
	OSSL_PARAM	params[2];

	for (int i = 0; i < MAC_CACHE_SIZE; i++)
	{
		entry = &mac_cache[i];
		if (entry->ctx != NULL && entry->keylen == keylen &&
			memcmp(entry->key, key, keylen) == 0)
		{
			/* a NULL key re-initialises with the key already set */
			if (!EVP_MAC_init(entry->ctx, NULL, 0, NULL))
				openssl_failure("reinitialise HMAC");
			return entry->ctx;
		}
	}

	if (hmac_algorithm == NULL &&
		(hmac_algorithm = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL)
		openssl_failure("fetch HMAC");

	/* evict round-robin; the entry is unusable until fully rebuilt */
	entry = &mac_cache[mac_cache_next];
	mac_cache_next = (mac_cache_next + 1) % MAC_CACHE_SIZE;
	if (entry->ctx != NULL)
	{
		EVP_MAC_CTX_free(entry->ctx);
		entry->ctx = NULL;
		explicit_bzero(entry->key, entry->keylen);
		pfree(entry->key);
	}

	entry->key = MemoryContextAlloc(TopMemoryContext, keylen + 1);
	memcpy(entry->key, key, keylen);
	entry->keylen = keylen;

	entry->ctx = EVP_MAC_CTX_new(hmac_algorithm);
	if (entry->ctx == NULL)
		openssl_failure("allocate HMAC context");
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
												 "SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (!EVP_MAC_init(entry->ctx, (const unsigned char *) key, keylen, params))
	{
		EVP_MAC_CTX_free(entry->ctx);
		entry->ctx = NULL;
		openssl_failure("initialise HMAC");
	}
	return entry->ctx;
}

/* Computes the lowercase hex v1 signature of "<t>.<payload>" into hex. */
static void
compute_signature(const char *payload, size_t payload_len, int64 timestamp,
				  const char *secret, size_t secret_len,
				  char hex[SHA256_HEX_LEN])
{
	EVP_MAC_CTX *ctx = keyed_mac(secret, secret_len);
	char		prefix[32];
	int			prefix_len;
	unsigned char mac[EVP_MAX_MD_SIZE];
	size_t		mac_len;

	prefix_len = snprintf(prefix, sizeof(prefix), INT64_FORMAT ".", timestamp);
	if (!EVP_MAC_update(ctx, (const unsigned char *) prefix, prefix_len) ||
		!EVP_MAC_update(ctx, (const unsigned char *) payload, payload_len) ||
		!EVP_MAC_final(ctx, mac, &mac_len, sizeof(mac)) ||
		mac_len * 2 != SHA256_HEX_LEN)
		openssl_failure("compute HMAC-SHA256");
	hex_encode((const char *) mac, mac_len, hex);
}

/*
 * Finds the next item of the header: sets key/value spans and returns the
 * position after the item, or NULL at the end.  As in the SDKs, the value
 * ends at the next '=' or ','; whitespace is not trimmed.
 */
static const char *
next_item(const char *p, const char *end,
		  const char **key, size_t *key_len,
		  const char **value, size_t *value_len)
{
	const char *item_end;
	const char *eq;

	if (p > end)
		return NULL;
	item_end = memchr(p, ',', end - p);
	if (item_end == NULL)
		item_end = end;
	eq = memchr(p, '=', item_end - p);

	*key = p;
	*key_len = (eq ? eq : item_end) - p;
	if (eq)
	{
		const char *value_end = memchr(eq + 1, '=', item_end - (eq + 1));

		*value = eq + 1;
		*value_len = (value_end ? value_end : item_end) - *value;
	}
	else
	{
		*value = item_end;
		*value_len = 0;
	}
	return item_end + 1;
}

/* Parses a non-negative decimal Unix time; false unless all digits. */
static bool
parse_timestamp(const char *s, size_t len, int64 *result)
{
	int64		value = 0;

	if (len == 0 || len > 18)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		value = value * 10 + (s[i] - '0');
	}
	*result = value;
	return true;
}

/*
 * Keeps a diagnostics item's value in dst (size max + 1) when it has 1 to
 * max printable ASCII characters (no space); else leaves dst empty.
 */
static void
keep_item(char *dst, size_t max, const char *value, size_t len)
{
	if (dst[0] != '\0' || len == 0 || len > max)
		return;					/* (the first one only) */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) value[i] <= 0x20 || (unsigned char) value[i] >= 0x7f)
			return;
	memcpy(dst, value, len);
	dst[len] = '\0';
}

/*
 * Keeps payload=: exactly 8 hex digits, lowercased.
 */
static void
keep_payload_item(char *dst, const char *value, size_t len)
{
	if (dst[0] != '\0' || len != 8)
		return;
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char) value[i]))
			return;
	for (size_t i = 0; i < len; i++)
		dst[i] = pg_ascii_tolower((unsigned char) value[i]);
	dst[len] = '\0';
}

/* The last 8 hex digits of the SHA-256 of the payload, into tail (9 bytes). */
static void
payload_digest_tail(const char *payload, size_t payload_len, char *tail)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	char		hex[EVP_MAX_MD_SIZE * 2];

	if (!EVP_Digest(payload, payload_len, md, &md_len, EVP_sha256(), NULL) || md_len != 32)
		openssl_failure("compute SHA-256");
	hex_encode((const char *) md, md_len, hex);
	memcpy(tail, hex + 2 * md_len - 8, 8);
	tail[8] = '\0';
}

/* Is c a character Stripe masks a secret with? */
#define IS_MASK(c) ((c) == '*' || (c) == '.')

/*
 * Does a configured secret look like a masked one (secret=): the visible
 * characters before the mask and after it are its first and last ones?
 * -1 when masked shows nothing to compare (no mask: not a masked secret,
 * and then never used), else 1 or 0.
 */
static int
secret_looks_like(const char *masked, const char *const *secrets, const size_t *secret_lens,
				  int nsecrets)
{
	const char *first = masked;
	const char *last;
	size_t		prefix;
	size_t		suffix;

	while (*first && !IS_MASK(*first))
		first++;
	if (*first == '\0')
		return -1;
	last = masked + strlen(masked) - 1;
	while (!IS_MASK(*last))
		last--;
	prefix = first - masked;
	suffix = strlen(last + 1);
	for (int i = 0; i < nsecrets; i++)
		if (secret_lens[i] >= prefix + suffix &&
			memcmp(secrets[i], masked, prefix) == 0 &&
			memcmp(secrets[i] + secret_lens[i] - suffix, last + 1, suffix) == 0)
			return 1;
	return 0;
}

/* Is this item key exactly k? */
#define KEY_IS(key, key_len, k) ((key_len) == strlen(k) && memcmp((key), (k), (key_len)) == 0)

/* Refuses more secrets than MAX_SECRETS. */
static void
check_secret_count(int nsecrets)
{
	if (nsecrets > MAX_SECRETS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%d webhook signing secrets given; at most %d are verified", nsecrets, MAX_SECRETS),
				 errhint("While rolling a secret, pass the old and the new one.")));
}

/*
 * Verifies a signature header; the order of the checks (and so of the
 * reasons reported) is the SDKs'.  Raises when there are more secrets or
 * signatures than the caps.
 */
static SignatureStatus
verify_header(const char *payload, size_t payload_len,
			  const char *header, size_t header_len,
			  const char *const *secrets, const size_t *secret_lens, int nsecrets,
			  int tolerance, pg_time_t now, SignatureReport *report)
{
	const char *end = header + header_len;
	const char *p;
	const char *key;
	const char *value;
	size_t		key_len;
	size_t		value_len;
	bool		has_timestamp = false;
	bool		matched = false;

	memset(report, 0, sizeof(*report));
	report->nsecrets = nsecrets;
	if (header_len == 0)
		return SIGNATURE_NO_HEADER;

	check_secret_count(nsecrets);
	for (p = header; (p = next_item(p, end, &key, &key_len, &value, &value_len)) != NULL;)
	{
		CHECK_FOR_INTERRUPTS();	/* (a header may be a gigabyte of commas) */
		if (KEY_IS(key, key_len, "t"))
			has_timestamp = parse_timestamp(value, value_len, &report->timestamp);
		else if (KEY_IS(key, key_len, "secret"))
			keep_item(report->secret, DIAGNOSTIC_VALUE_MAX, value, value_len);
		else if (KEY_IS(key, key_len, "destination"))
			keep_item(report->destination, DIAGNOSTIC_VALUE_MAX, value, value_len);
		else if (KEY_IS(key, key_len, "payload"))
			keep_payload_item(report->payload, value, value_len);
		else if (KEY_IS(key, key_len, SIGNATURE_SCHEME) &&
				 ++report->nsignatures > MAX_SIGNATURES)
			ereport(ERROR,
					(errcode(ERRCODE_SB_TOO_MANY_SIGNATURES),
					 errmsg("Stripe-Signature header has more than %d v1 signatures", MAX_SIGNATURES),
					 errdetail("Stripe sends one, or two while a secret is being rolled.")));
	}
	if (!has_timestamp)
		return SIGNATURE_NO_TIMESTAMP;
	if (report->nsignatures == 0)
		return SIGNATURE_NO_V1;

	for (int i = 0; i < nsecrets; i++)
	{
		char		expected[SHA256_HEX_LEN];

		CHECK_FOR_INTERRUPTS();
		compute_signature(payload, payload_len, report->timestamp,
						  secrets[i], secret_lens[i], expected);

		/* compare with every v1, in constant time, without stopping early */
		for (p = header; (p = next_item(p, end, &key, &key_len, &value, &value_len)) != NULL;)
			if (KEY_IS(key, key_len, SIGNATURE_SCHEME) &&
				value_len == SHA256_HEX_LEN &&
				CRYPTO_memcmp(value, expected, SHA256_HEX_LEN) == 0)
				matched = true;
	}
	if (!matched)
	{
		/* what Stripe's diagnostics items tell (the failure path only) */
		report->secret_likeness = report->secret[0] ?
			secret_looks_like(report->secret, secrets, secret_lens, nsecrets) : -1;
		if (report->payload[0])
			payload_digest_tail(payload, payload_len, report->body_tail);
		return SIGNATURE_MISMATCH;
	}

	if (tolerance > 0 && now - report->timestamp > tolerance)
		return SIGNATURE_TOO_OLD;
	return SIGNATURE_VALID;
}

/*
 * Raises the error of a mismatch, saying which of the two went wrong when
 * Stripe's diagnostics items tell: the body (payload= names another one),
 * or the secrets (the body is Stripe's, or none of them looks like the
 * masked secret= Stripe signed with).  Only what Stripe sent is quoted,
 * never any part of a configured secret.
 */
static void
report_mismatch(const SignatureReport *report)
{
	const char *destination = report->destination[0] ?
		psprintf(" (event destination %s)", report->destination) : "";
	bool		body_is_stripes = report->payload[0] &&
		strcmp(report->payload, report->body_tail) == 0;
	const char *masked = report->secret;

	/*
	 * (shown from its mask on, "****abcd": a "whsec_" literal is scrubbed
	 * from every message, secrets.c, and the rest is what tells)
	 */
	while (*masked && !IS_MASK(*masked))
		masked++;
	if (report->payload[0] && !body_is_stripes)
		ereport(ERROR,
				(errcode(ERRCODE_SB_SIGNATURE_MISMATCH),
				 errmsg("no Stripe-Signature v1 signature matches the payload"),
				 errdetail("The body differs from the one Stripe sent%s: its SHA-256 ends in %s, Stripe's in %s (payload=).",
						   destination, report->body_tail, report->payload),
				 errhint("Pass the raw request body, byte for byte: it was altered, re-encoded or parsed by a framework on the way.")));
	if (report->secret_likeness == 0)
		ereport(ERROR,
				(errcode(ERRCODE_SB_SIGNATURE_MISMATCH),
				 errmsg("no Stripe-Signature v1 signature matches the payload"),
				 errdetail("None of the %d configured secret(s) looks like the one Stripe signed with%s, %s (secret=)%s.",
						   report->nsecrets, destination, masked,
						   body_is_stripes ? "; the body is the one Stripe sent (payload=)" : ""),
				 errhint("Add that destination's signing secret to the list in stripe_billing.webhook_secret (each event destination has its own).")));
	if (body_is_stripes)
		ereport(ERROR,
				(errcode(ERRCODE_SB_SIGNATURE_MISMATCH),
				 errmsg("no Stripe-Signature v1 signature matches the payload"),
				 errdetail("The body is the one Stripe sent%s: its SHA-256 ends in %s, as payload= says; none of the %d configured secret(s) signed it%s%s.",
						   destination, report->body_tail, report->nsecrets,
						   report->secret_likeness == 1 ? ", though one looks like Stripe's " : "",
						   report->secret_likeness == 1 ? masked : ""),
				 errhint("Put the destination's own signing secret in stripe_billing.webhook_secret.")));
	ereport(ERROR,
			(errcode(ERRCODE_SB_SIGNATURE_MISMATCH),
			 errmsg("no Stripe-Signature v1 signature matches the payload"),
			 errdetail("%d signature(s) were compared with the HMAC of %d secret(s).",
					   report->nsignatures, report->nsecrets),
			 errhint("Pass the raw request body, byte for byte, and the endpoint's own signing secret.")));
}

/* Raises the error that says why a signature was refused. */
static void
report_signature_failure(SignatureStatus status, const SignatureReport *report,
			   int tolerance, pg_time_t now)
{
	switch (status)
	{
		case SIGNATURE_VALID:
			return;
		case SIGNATURE_NO_HEADER:
			ereport(ERROR,
					(errcode(ERRCODE_SB_NO_SIGNATURE_HEADER),
					 errmsg("Stripe-Signature header is missing or empty")));
			break;
		case SIGNATURE_NO_TIMESTAMP:
			ereport(ERROR,
					(errcode(ERRCODE_SB_NO_TIMESTAMP),
					 errmsg("Stripe-Signature header has no timestamp"),
					 errdetail("The header needs an item \"t=<Unix seconds>\".")));
			break;
		case SIGNATURE_NO_V1:
			ereport(ERROR,
					(errcode(ERRCODE_SB_NO_V1_SIGNATURE),
					 errmsg("Stripe-Signature header has no v1 signature"),
					 errdetail("Only the v1 scheme is verified; other schemes such as v0 are ignored.")));
			break;
		case SIGNATURE_MISMATCH:
			report_mismatch(report);
			break;
		case SIGNATURE_TOO_OLD:
			ereport(ERROR,
					(errcode(ERRCODE_SB_TIMESTAMP_TOO_OLD),
					 errmsg("Stripe-Signature timestamp is too old"),
					 errdetail("The signature was made at " INT64_FORMAT ", " INT64_FORMAT " seconds ago; the tolerance is %d seconds.",
							   report->timestamp, (int64) now - report->timestamp, tolerance)));
			break;
	}
}

/*
 * Verifies and raises the precise reason on failure; the entry point of
 * stripe_handle_webhook and the stripe_check_signature functions.
 */
void
sb_check_signature(const char *payload, size_t payload_len,
				   const char *header, size_t header_len,
				   const char *const *secrets, const size_t *secret_lens,
				   int nsecrets, int tolerance, pg_time_t now)
{
	SignatureReport report;
	SignatureStatus status;

	if (nsecrets == 0)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NO_WEBHOOK_SECRET),
				 errmsg("no webhook signing secret is configured"),
				 errhint("A superuser must set stripe_billing.webhook_secret (the endpoint's \"whsec_...\" signing secret).")));
	if (payload_len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_SB_MALFORMED_EVENT),
				 errmsg("webhook payload is empty")));

	status = verify_header(payload, payload_len, header, header_len,
						   secrets, secret_lens, nsecrets, tolerance, now, &report);
	report_signature_failure(status, &report, tolerance, now);
}

/*
 * Splits a comma-separated secret list into palloc'd arrays; empty items are
 * skipped.  Returns the number of secrets.
 */
int
sb_split_secret_list(const char *list, char ***secrets, size_t **secret_lens)
{
	int			max = 1;
	int			n = 0;
	const char *p;

	for (p = list; p && *p; p++)
		if (*p == ',')
			max++;
	*secrets = palloc(sizeof(char *) * max);
	*secret_lens = palloc(sizeof(size_t) * max);

	for (p = list; p && *p;)
	{
		size_t		len;

		p += strspn(p, ", \t");
		len = strcspn(p, ", \t");
		if (len > 0)
		{
			(*secrets)[n] = pnstrdup(p, len);
			(*secret_lens)[n] = len;
			n++;
		}
		p += len;
	}
	return n;
}

/* Collects the secrets of argument argno: one text, or a text[] (NULLs and empties skipped). */
static int
secrets_from_arg(FunctionCallInfo fcinfo, int argno, bool is_array,
				 char ***secrets, size_t **secret_lens)
{
	int			n = 0;

	*secrets = NULL;
	*secret_lens = NULL;
	if (PG_ARGISNULL(argno))
		return 0;

	if (!is_array)
	{
		text	   *secret = PG_GETARG_TEXT_PP(argno);

		if (VARSIZE_ANY_EXHDR(secret) == 0)
			return 0;
		*secrets = palloc(sizeof(char *));
		*secret_lens = palloc(sizeof(size_t));
		(*secrets)[0] = VARDATA_ANY(secret);
		(*secret_lens)[0] = VARSIZE_ANY_EXHDR(secret);
		return 1;
	}
	else
	{
		ArrayType  *array = PG_GETARG_ARRAYTYPE_P(argno);
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;

		deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &nelems);
		*secrets = palloc(sizeof(char *) * Max(nelems, 1));
		*secret_lens = palloc(sizeof(size_t) * Max(nelems, 1));
		for (int i = 0; i < nelems; i++)
		{
			text	   *secret;

			if (nulls[i])
				continue;
			secret = DatumGetTextPP(elems[i]);
			if (VARSIZE_ANY_EXHDR(secret) == 0)
				continue;
			(*secrets)[n] = VARDATA_ANY(secret);
			(*secret_lens)[n] = VARSIZE_ANY_EXHDR(secret);
			n++;
		}
		return n;
	}
}

/* The tolerance argument: NULL means the SDKs' default of 300 seconds. */
static int
tolerance_from_arg(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? 300 : PG_GETARG_INT32(argno);
}

/* The "now" argument as Unix seconds: NULL means now(), the transaction start. */
static pg_time_t
now_from_arg(FunctionCallInfo fcinfo, int argno)
{
	return timestamptz_to_time_t(PG_ARGISNULL(argno) ? GetCurrentTransactionStartTimestamp()
								 : PG_GETARG_TIMESTAMPTZ(argno));
}

/* Shared body of the boolean functions. */
static Datum
verify_signature(FunctionCallInfo fcinfo, bool secrets_array)
{
	bytea	   *payload;
	text	   *header;
	char	  **secrets;
	size_t	   *secret_lens;
	int			nsecrets;
	SignatureReport report;

	/* a missing anything is simply not a valid signature */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	payload = PG_GETARG_BYTEA_PP(0);
	header = PG_GETARG_TEXT_PP(1);
	nsecrets = secrets_from_arg(fcinfo, 2, secrets_array, &secrets, &secret_lens);
	if (VARSIZE_ANY_EXHDR(payload) == 0 || VARSIZE_ANY_EXHDR(header) == 0 ||
		nsecrets == 0)
		PG_RETURN_BOOL(false);

	PG_RETURN_BOOL(verify_header(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload),
								 VARDATA_ANY(header), VARSIZE_ANY_EXHDR(header),
								 (const char *const *) secrets, secret_lens, nsecrets,
								 tolerance_from_arg(fcinfo, 3),
								 now_from_arg(fcinfo, 4),
								 &report) == SIGNATURE_VALID);
}

/* Shared body of the raising functions. */
static Datum
check_signature(FunctionCallInfo fcinfo, bool secrets_array)
{
	bytea	   *payload = PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0);
	text	   *header = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	char	  **secrets;
	size_t	   *secret_lens;
	int			nsecrets;

	nsecrets = secrets_from_arg(fcinfo, 2, secrets_array, &secrets, &secret_lens);
	sb_check_signature(payload ? VARDATA_ANY(payload) : NULL,
					   payload ? VARSIZE_ANY_EXHDR(payload) : 0,
					   header ? VARDATA_ANY(header) : NULL,
					   header ? VARSIZE_ANY_EXHDR(header) : 0,
					   (const char *const *) secrets, secret_lens, nsecrets,
					   tolerance_from_arg(fcinfo, 3),
					   now_from_arg(fcinfo, 4));
	PG_RETURN_VOID();
}

/*
 * stripe_verify_signature(payload text|bytea, header text, secret text,
 *                         tolerance int, now timestamptz) -> boolean
 */
Datum
stripe_verify_signature(PG_FUNCTION_ARGS)
{
	return verify_signature(fcinfo, false);
}

/* stripe_verify_signature(payload, header, secrets text[], tolerance, now) -> boolean */
Datum
stripe_verify_signature_any(PG_FUNCTION_ARGS)
{
	return verify_signature(fcinfo, true);
}

/* stripe_check_signature(payload, header, secret text, tolerance, now): raises why not */
Datum
stripe_check_signature(PG_FUNCTION_ARGS)
{
	return check_signature(fcinfo, false);
}

/* stripe_check_signature(payload, header, secrets text[], tolerance, now): raises why not */
Datum
stripe_check_signature_any(PG_FUNCTION_ARGS)
{
	return check_signature(fcinfo, true);
}
