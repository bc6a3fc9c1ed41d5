/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The HTTP client of the Stripe API calls, on libcurl.
 *
 * One easy handle per backend, reset before each request but kept, so its
 * connection cache keeps connections to Stripe alive between calls.  Every
 * transfer has connect and total timeouts, CURLOPT_NOSIGNAL (signals belong
 * to the backend), and a progress callback that aborts it as soon as an
 * interrupt is pending (query cancel, statement_timeout, termination);
 * CHECK_FOR_INTERRUPTS then raises the right error.  Only HTTPS is spoken,
 * except plain HTTP to a loopback host (tests, a local fake Stripe).
 *
 * libcurl allocates with malloc: its lists and escaped strings are freed
 * with curl's own functions, also on error paths.  Nothing that can raise
 * runs inside a libcurl callback (an ereport would longjmp out of libcurl
 * and leave the handle unusable for the rest of the backend's life): the
 * write callback collects the body in a malloc'd buffer, capped at
 * stripe_billing.max_response_size, and the header callback copies the few
 * headers kept into fixed arrays, both only recording a failure.  Once the
 * transfer is over, the response is copied into palloc'd memory, the
 * buffer freed on every path, and only then is anything raised.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

static CURL *curl_handle = NULL;

/* Room for one kept header value (longer ones are cut, still terminated). */
#define HEADER_VALUE_SIZE 128

/*
 * Callback state of one transfer.  Callbacks only write into it (malloc,
 * copies into fixed arrays, flags): nothing in them can raise.
 */
typedef struct Transfer
{
	char	   *body;			/* malloc'd, NUL-terminated; or NULL */
	size_t		body_len;
	size_t		body_size;		/* allocated */
	size_t		max_len;		/* stripe_billing.max_response_size in bytes */
	bool		too_large;		/* stopped at max_len */
	bool		out_of_memory;	/* realloc failed */
	char		request_id[HEADER_VALUE_SIZE];
	char		date[HEADER_VALUE_SIZE];
	char		retry_after[HEADER_VALUE_SIZE];
	char		should_retry[HEADER_VALUE_SIZE];
} Transfer;

/* Readies a transfer for a new request (any earlier body already freed). */
static void
init_transfer(Transfer *t)
{
	memset(t, 0, sizeof(Transfer));
	/* (the largest setting, 1 GB, would not fit a palloc with its NUL) */
	t->max_len = Min((size_t) sb_max_response_size * 1024, MaxAllocSize - 1);
}

/* Frees a transfer's malloc'd body. */
static void
free_transfer_body(Transfer *t)
{
	free(t->body);
	t->body = NULL;
	t->body_len = t->body_size = 0;
}

/*
 * Write callback: appends to the malloc'd body.  Past max_len, or when
 * realloc fails, it records why and returns 0, which aborts the transfer
 * (CURLE_WRITE_ERROR).
 */
static size_t
write_body(char *data, size_t size, size_t nmemb, void *arg)
{
	Transfer   *t = (Transfer *) arg;
	size_t		n = size * nmemb;

	if (n > t->max_len - t->body_len)
	{
		t->too_large = true;
		return 0;
	}
	if (t->body_len + n + 1 > t->body_size)
	{
		size_t		want = Max(t->body_size, (size_t) 16384);
		char	   *grown;

		while (want < t->body_len + n + 1)
			want *= 2;
		want = Min(want, t->max_len + 1);
		grown = realloc(t->body, want);
		if (grown == NULL)
		{
			t->out_of_memory = true;
			return 0;
		}
		t->body = grown;
		t->body_size = want;
	}
	memcpy(t->body + t->body_len, data, n);
	t->body_len += n;
	t->body[t->body_len] = '\0';
	return n;
}

/*
 * Copies the value of a header line into dst (size HEADER_VALUE_SIZE) if
 * its name is name: trimmed, cut to fit, any byte that is not printable
 * ASCII replaced by '?' (values end up in messages).
 */
static bool
keep_header(char *dst, const char *line, size_t len, const char *name)
{
	size_t		name_len = strlen(name);
	const char *value;
	const char *end = line + len;
	size_t		n;

	if (len <= name_len || pg_strncasecmp(line, name, name_len) != 0 || line[name_len] != ':')
		return false;
	value = line + name_len + 1;
	while (value < end && (*value == ' ' || *value == '\t'))
		value++;
	while (end > value && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
		end--;
	n = Min((size_t) (end - value), (size_t) HEADER_VALUE_SIZE - 1);
	for (size_t i = 0; i < n; i++)
		dst[i] = ((unsigned char) value[i] >= 0x20 && (unsigned char) value[i] < 0x7f) ? value[i] : '?';
	dst[n] = '\0';
	return true;
}

/* Header callback: keeps the response headers the callers need. */
static size_t
read_header(char *line, size_t size, size_t nitems, void *arg)
{
	Transfer   *t = (Transfer *) arg;
	size_t		len = size * nitems;

	/* a new status line (after a 100 Continue, say): its own headers only */
	if (len >= 5 && strncmp(line, "HTTP/", 5) == 0)
		t->request_id[0] = t->date[0] = t->retry_after[0] = t->should_retry[0] = '\0';
	else if (!keep_header(t->request_id, line, len, "Request-Id") &&
			 !keep_header(t->date, line, len, "Date") &&
			 !keep_header(t->retry_after, line, len, "Retry-After"))
		(void) keep_header(t->should_retry, line, len, "Stripe-Should-Retry");
	return len;
}

/*
 * Progress callback: a non-zero answer aborts the transfer.  Only a cancel
 * (statement_timeout too) or termination stops a request; other interrupts
 * wait for CHECK_FOR_INTERRUPTS after it.
 */
static int
check_interrupts(void *arg, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

/* Is host "localhost", an IPv4 address in 127.0.0.0/8, or ::1? */
static bool
host_is_loopback(const char *host)
{
	int			octets[4];
	char		tail;

	if (pg_strcasecmp(host, "localhost") == 0 ||
		strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0)
		return true;
	/* a dotted quad and nothing else: 127.0.0.1.example.com is a name */
	if (sscanf(host, "%d.%d.%d.%d%c", &octets[0], &octets[1], &octets[2], &octets[3], &tail) != 4)
		return false;
	for (int i = 0; i < 4; i++)
		if (octets[i] < 0 || octets[i] > 255)
			return false;
	return octets[0] == 127 && strspn(host, "0123456789.") == strlen(host);
}

/*
 * Checks a base URL setting (stripe_billing.api_base, .meter_events_base),
 * parsed the way libcurl will parse it: https://host[:port], or http:// to
 * a loopback host, never with a user name or password in it
 * (http://127.0.0.1@example.com goes to example.com).  Raises SBC03
 * otherwise, before any network traffic.  *checked remembers the last
 * value found allowed.
 */
static void
check_base(const char *setting, const char *base, char **checked)
{
	CURLU	   *url;
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *user = NULL;
	char	   *password = NULL;
	bool		ok;

	if (*checked && strcmp(*checked, base) == 0)
		return;
	url = curl_url();
	if (url == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	ok = curl_url_set(url, CURLUPART_URL, base, 0) == CURLUE_OK &&
		curl_url_get(url, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		curl_url_get(url, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		curl_url_get(url, CURLUPART_USER, &user, 0) == CURLUE_NO_USER &&
		curl_url_get(url, CURLUPART_PASSWORD, &password, 0) == CURLUE_NO_PASSWORD &&
		(pg_strcasecmp(scheme, "https") == 0 ||
		 (pg_strcasecmp(scheme, "http") == 0 && host_is_loopback(host)));
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(password);
	curl_url_cleanup(url);

	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_SB_API_BASE_REFUSED),
				 errmsg("%s \"%s\" is not allowed", setting, base),
				 errdetail("Only https:// is allowed, and plain http:// to a loopback host for tests, without a user name or password.")));
	if (*checked)
		pfree(*checked);
	*checked = MemoryContextStrdup(TopMemoryContext, base);
}

/* Checks stripe_billing.api_base (see check_base). */
void
sb_check_api_base(const char *base)
{
	static char *checked = NULL;

	check_base("stripe_billing.api_base", base, &checked);
}

/* Checks stripe_billing.meter_events_base (see check_base). */
void
sb_check_meter_events_base(const char *base)
{
	static char *checked = NULL;

	check_base("stripe_billing.meter_events_base", base, &checked);
}

/* Returns the backend's easy handle, reset for a new request. */
static CURL *
get_handle(void)
{
	if (curl_handle == NULL)
	{
		static bool initialized = false;

		if (!initialized)
		{
			if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
				elog(ERROR, "curl_global_init failed");
			initialized = true;
		}
		curl_handle = curl_easy_init();
		if (curl_handle == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	else
		curl_easy_reset(curl_handle);	/* keeps live connections */
	return curl_handle;
}


/* Checks the settings a request needs; raises SBC02 or SBC03. */
void
sb_check_settings(void)
{
	if (sb_api_key == NULL || sb_api_key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_SB_NO_API_KEY),
				 errmsg("no Stripe API key is configured"),
				 errhint("A superuser must set stripe_billing.api_key.")));
	sb_check_api_base(sb_api_base);
}

/* base || path, and ?query when there is no body. */
static char *
request_url(const char *base, const char *path, const char *query)
{
	StringInfoData url;

	initStringInfo(&url);
	appendStringInfoString(&url, base);
	while (url.len > 0 && url.data[url.len - 1] == '/')
		url.data[--url.len] = '\0';	/* "https://api.stripe.com/" + "/v1/..." */
	appendStringInfoString(&url, path);
	if (query && query[0])
		appendStringInfo(&url, "?%s", query);
	return url.data;
}

/*
 * The request headers, as a curl list (malloc'd: the caller frees it with
 * curl_slist_free_all), authenticated with secret (the API key, or a meter
 * event session's token), with content_type when there is a body,
 * Stripe-Account when the request is a connected account's (account NULL:
 * the platform's own), and Stripe-Context when it is made in a thin event's
 * context (context NULL: none).  The account and the context go into header
 * lines as they are: they are checked here again, whatever the caller
 * checked, before anything is built.  Built without any chance of an
 * ereport between the appends, so the list cannot leak; our copy of the
 * secret's line is wiped.
 */
static struct curl_slist *
build_headers(const char *secret, const char *idempotency_key, const char *content_type,
			  const char *account, const char *context)
{
	char	   *auth;
	const char *lines[8];
	int			n = 0;
	struct curl_slist *headers = NULL;

	if (account)
		sb_check_account("account", account);
	if (context)
		sb_check_context("context", context);
	auth = psprintf("Authorization: Bearer %s", secret);
	lines[n++] = auth;
	lines[n++] = psprintf("Stripe-Version: %s", sb_api_version);
	lines[n++] = "User-Agent: stripe_billing/0.1 (PostgreSQL extension)";
	lines[n++] = "Accept: application/json";
	if (idempotency_key)
		lines[n++] = psprintf("Idempotency-Key: %s", idempotency_key);
	if (content_type)
		lines[n++] = psprintf("Content-Type: %s", content_type);
	if (account)
		lines[n++] = psprintf("Stripe-Account: %s", account);
	if (context)
		lines[n++] = psprintf("Stripe-Context: %s", context);

	for (int i = 0; i < n; i++)
	{
		struct curl_slist *next = curl_slist_append(headers, lines[i]);

		if (next == NULL)
		{
			curl_slist_free_all(headers);
			headers = NULL;
			break;
		}
		headers = next;
	}
	explicit_bzero(auth, strlen(auth));
	pfree(auth);
	if (headers == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	return headers;
}

/* Sets a handle's options for one request (no ereport: nothing to leak). */
static void
set_options(CURL *curl, const char *method, const char *url, const char *form,
			struct curl_slist *headers, Transfer *transfer, char *errbuf)
{
	curl_easy_setopt(curl, CURLOPT_URL, url);

	/*
	 * The path was checked to hold no "." or ".." segment (check_path in
	 * api.c), so libcurl's resolving of them would change nothing; as is,
	 * the bytes sent are exactly the bytes checked, whatever libcurl's
	 * normalization does now or later.
	 */
	curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) sb_connect_timeout);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) sb_request_timeout);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	/* (a Content-Length over the cap stops it before the body; see write_body) */
	curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) transfer->max_len);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, transfer);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, read_header);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, transfer);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, check_interrupts);
	curl_easy_setopt(curl, CURLOPT_XFERINFODATA, NULL);
	if (strcmp(method, "POST") == 0)
	{
		curl_easy_setopt(curl, CURLOPT_POST, 1L);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form ? form : "");
	}
	else if (strcmp(method, "GET") != 0)
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
}

/*
 * Copies a finished transfer into a palloc'd response in the current
 * memory context: status and body, or the network error; the kept headers.
 * Marks the transfer too large when libcurl stopped it on Content-Length.
 * Frees nothing: the caller frees the body whatever happens.
 */
static SbHttpResponse *
collect_response(CURL *curl, CURLcode code, const char *errbuf, Transfer *t)
{
	SbHttpResponse *response = palloc0(sizeof(SbHttpResponse));

	if (code == CURLE_FILESIZE_EXCEEDED)
		t->too_large = true;
	if (code == CURLE_OK)
	{
		long		status;

		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
		response->status = (int) status;
	}
	else
	{
		response->network_error = pstrdup(errbuf[0] ? errbuf : curl_easy_strerror(code));
		response->timed_out = code == CURLE_OPERATION_TIMEDOUT;
	}
	response->body = palloc(t->body_len + 1);
	if (t->body_len > 0)
		memcpy(response->body, t->body, t->body_len);
	response->body[t->body_len] = '\0';
	response->body_len = (int) t->body_len;
	response->request_id = t->request_id[0] ? pstrdup(t->request_id) : NULL;
	response->date = t->date[0] ? pstrdup(t->date) : NULL;
	response->retry_after = t->retry_after[0] ? pstrdup(t->retry_after) : NULL;
	response->should_retry = t->should_retry[0] ? pstrdup(t->should_retry) : NULL;
	return response;
}

/*
 * Raises the error of a transfer the write callback stopped: a body over
 * stripe_billing.max_response_size (SBA07, not worth retrying: the same
 * request gets the same answer), or no memory for it.
 */
static void
report_stopped_transfer(const char *method, const char *path, Transfer *t)
{
	if (t->too_large)
		ereport(ERROR,
				(errcode(ERRCODE_SB_NETWORK),
				 errmsg("Stripe API response to %s %s exceeds stripe_billing.max_response_size (%d kB)",
						method, path, sb_max_response_size),
				 errhint("A superuser may raise stripe_billing.max_response_size.")));
	if (t->out_of_memory)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed on a Stripe API response to %s %s, after %zu bytes.",
						   method, path, t->body_len)));
}

/*
 * Performs one request to stripe_billing.api_base || path, as account's
 * (Stripe-Account; NULL: the platform's own).  form: the
 * encoded body (POST) or query string (GET/DELETE), may be empty.  Returns
 * the status, body and headers; a transport failure (refused, timed out,
 * truncated) comes back as status 0 with network_error set, for the caller
 * to retry or report.  An interrupt raises its own error.
 */
SbHttpResponse *
sb_http_request(const char *method, const char *path, const char *form,
				const char *idempotency_key, const char *account)
{
	return sb_http_request_in_context(method, path, form, idempotency_key, account, NULL);
}

/*
 * sb_http_request, with Stripe-Context: context (a thin event's, which
 * names the connected account its event and objects belong to; NULL: none).
 */
SbHttpResponse *
sb_http_request_in_context(const char *method, const char *path, const char *form,
						   const char *idempotency_key, const char *account, const char *context)
{
	SbHttpResponse *response = NULL;
	bool		has_body = strcmp(method, "POST") == 0;
	Transfer   *transfer = palloc(sizeof(Transfer));	/* (not a local: see PG_FINALLY) */
	struct curl_slist *headers;
	CURL	   *curl;
	CURLcode	code = CURLE_OK;
	char	   *errbuf = palloc(CURL_ERROR_SIZE);
	char	   *url;

	sb_check_settings();
	if (sb_rate_every_request)
		sb_rate_wait();			/* (the worker's budget: rate.c) */
	url = request_url(sb_api_base, path, has_body ? NULL : form);
	init_transfer(transfer);
	errbuf[0] = '\0';

	curl = get_handle();
	headers = build_headers(sb_api_key, idempotency_key,
							has_body ? "application/x-www-form-urlencoded" : NULL, account, context);
	set_options(curl, method, url, form, headers, transfer, errbuf);
	PG_TRY();
	{
		code = curl_easy_perform(curl);
		response = collect_response(curl, code, errbuf, transfer);
	}
	PG_FINALLY();
	{
		/* the header list holds the key: forget the handle's pointer to it */
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
		curl_slist_free_all(headers);
		free_transfer_body(transfer);
	}
	PG_END_TRY();

	if (code == CURLE_ABORTED_BY_CALLBACK)
		CHECK_FOR_INTERRUPTS();	/* raises the cancel, timeout or termination */
	report_stopped_transfer(method, path, transfer);
	return response;
}

/*
 * GETs that run in the background while the backend does other work (the
 * worker fetches the next page of events while it applies this one; the
 * backfill asks for the next customers' entitlements while it applies
 * one's).  At most PREFETCH_SLOTS at once, each on an easy handle of its
 * own, all on one multi handle (which keeps their connections alive), each
 * response collected in a memory context of its own until it is taken.  A
 * request not taken within PREFETCH_MAX_AGE is dropped: an answer that old
 * is no longer the present.  A request is known by its account, path and
 * query: an answer made for one account never serves another's request.
 */
#define PREFETCH_SLOTS 4
#define PREFETCH_MAX_AGE_US (10 * USECS_PER_SEC)

typedef struct PrefetchSlot
{
	CURL	   *handle;
	MemoryContext context;
	char	   *request;		/* "path?query" in flight or done, or NULL */
	char	   *account;		/* whose (Stripe-Account), NULL: the platform's */
	TimestampTz started;		/* when it was sent */
	bool		done;			/* finished: result is its outcome */
	CURLcode	result;
	struct curl_slist *headers;
	Transfer	transfer;		/* its body malloc'd while request is set */
	char		errbuf[CURL_ERROR_SIZE];
} PrefetchSlot;

static CURLM *prefetch_multi = NULL;
static PrefetchSlot prefetch[PREFETCH_SLOTS];

/* Forgets a background request, finished or not, and frees its body. */
static void
drop_prefetch(PrefetchSlot *slot)
{
	if (slot->request == NULL)
		return;
	curl_multi_remove_handle(prefetch_multi, slot->handle);
	curl_easy_setopt(slot->handle, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(slot->headers);
	slot->headers = NULL;
	free_transfer_body(&slot->transfer);
	slot->request = NULL;
	slot->account = NULL;
	MemoryContextReset(slot->context);
}

/* Forgets every background request. */
static void
drop_all_prefetches(void)
{
	for (int i = 0; i < PREFETCH_SLOTS; i++)
		drop_prefetch(&prefetch[i]);
}

/* Records the outcome of the transfers libcurl says are finished. */
static void
read_prefetch_messages(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(prefetch_multi, &left)) != NULL)
	{
		if (msg->msg != CURLMSG_DONE)
			continue;
		for (int i = 0; i < PREFETCH_SLOTS; i++)
			if (prefetch[i].request != NULL && prefetch[i].handle == msg->easy_handle)
			{
				prefetch[i].done = true;
				prefetch[i].result = msg->data.result;
			}
	}
}

/*
 * Moves the background transfers on; with slot, waits until that one is
 * finished.  Interrupts raise (every background request dropped).
 */
static void
pump_prefetches(PrefetchSlot *slot)
{
	int			running;

	PG_TRY();
	{
		for (;;)
		{
			if (curl_multi_perform(prefetch_multi, &running) != CURLM_OK)
				break;
			read_prefetch_messages();
			if (slot == NULL || slot->done || running == 0)
				break;
			/* (a signal's latch set does not wake poll: 100 ms at most) */
			(void) curl_multi_poll(prefetch_multi, NULL, 0, 100, NULL);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		drop_all_prefetches();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * Moves the transfers on until slot's request is sent (its connection
 * reused, or a new one made), for PREFETCH_SEND_WAIT at most: nothing moves
 * them while the backend works, so a request still connecting would only
 * leave when taken.  (A TLS handshake may take longer: it goes on at the
 * next call.)
 */
#define PREFETCH_SEND_WAIT_US 20000

static void
send_prefetch(PrefetchSlot *slot)
{
	TimestampTz until = GetCurrentTimestamp() + PREFETCH_SEND_WAIT_US;
	long		sent = 0;

	for (;;)
	{
		pump_prefetches(NULL);
		if (slot->request == NULL || slot->done ||
			curl_easy_getinfo(slot->handle, CURLINFO_REQUEST_SIZE, &sent) != CURLE_OK || sent > 0 ||
			GetCurrentTimestamp() >= until)
			return;
		(void) curl_multi_poll(prefetch_multi, NULL, 0, 1, NULL);
		CHECK_FOR_INTERRUPTS();
	}
}

/* The slot holding account's GET path?query, or NULL. */
static PrefetchSlot *
find_prefetch(const char *path, const char *query, const char *account)
{
	size_t		len = strlen(path);

	for (int i = 0; i < PREFETCH_SLOTS; i++)
		if (prefetch[i].request != NULL &&
			strncmp(prefetch[i].request, path, len) == 0 && prefetch[i].request[len] == '?' &&
			strcmp(prefetch[i].request + len + 1, query) == 0 &&
			sb_same_account(prefetch[i].account, account))
			return &prefetch[i];
	return NULL;
}

/* Drops the background requests sent more than PREFETCH_MAX_AGE ago. */
static void
drop_old_prefetches(void)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < PREFETCH_SLOTS; i++)
		if (prefetch[i].request != NULL && now - prefetch[i].started > PREFETCH_MAX_AGE_US)
			drop_prefetch(&prefetch[i]);
}

/*
 * Starts account's GET path?query in the background (account NULL: the
 * platform's), unless it is already: in a free slot, or in place of the
 * oldest request.  Does nothing when the settings would refuse it: the
 * request made the usual way will say why.
 */
void
sb_http_prefetch(const char *path, const char *query, const char *account)
{
	MemoryContext oldcontext;
	PrefetchSlot *slot = NULL;
	char	   *url;

	if (account)
		sb_check_account("account", account);
	if (sb_api_key == NULL || sb_api_key[0] == '\0')
		return;
	sb_check_api_base(sb_api_base);
	if (prefetch_multi == NULL)
	{
		prefetch_multi = curl_multi_init();
		if (prefetch_multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	drop_old_prefetches();
	if (find_prefetch(path, query, account) != NULL)
		return;

	for (int i = 0; i < PREFETCH_SLOTS; i++)
		if (prefetch[i].request == NULL)
		{
			slot = &prefetch[i];
			break;
		}
	if (slot == NULL)
	{
		slot = &prefetch[0];
		for (int i = 1; i < PREFETCH_SLOTS; i++)
			if (prefetch[i].started < slot->started)
				slot = &prefetch[i];
		drop_prefetch(slot);
	}

	if (slot->context == NULL)
	{
		slot->handle = curl_easy_init();
		if (slot->handle == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
		slot->context = AllocSetContextCreate(TopMemoryContext, "stripe_billing prefetch",
											  ALLOCSET_SMALL_SIZES);
	}
	else
		curl_easy_reset(slot->handle);	/* (the multi keeps the connections) */

	oldcontext = MemoryContextSwitchTo(slot->context);
	url = request_url(sb_api_base, path, query);
	init_transfer(&slot->transfer);
	slot->errbuf[0] = '\0';
	slot->headers = build_headers(sb_api_key, NULL, NULL, account, NULL);
	slot->request = psprintf("%s?%s", path, query);
	slot->account = account ? pstrdup(account) : NULL;
	slot->started = GetCurrentTimestamp();
	slot->done = false;
	MemoryContextSwitchTo(oldcontext);

	set_options(slot->handle, "GET", url, NULL, slot->headers, &slot->transfer, slot->errbuf);
	if (curl_multi_add_handle(prefetch_multi, slot->handle) != CURLM_OK)
	{
		slot->request = NULL;	/* not added: only the list to free */
		slot->account = NULL;
		curl_easy_setopt(slot->handle, CURLOPT_HTTPHEADER, NULL);
		curl_slist_free_all(slot->headers);
		slot->headers = NULL;
		MemoryContextReset(slot->context);
		return;
	}
	sb_rate_count();			/* (sent now: counted, not delayed; rate.c) */
	send_prefetch(slot);
}

/* Is account's GET path?query a request started in the background (and recent)? */
bool
sb_http_prefetched_is(const char *path, const char *query, const char *account)
{
	drop_old_prefetches();
	return find_prefetch(path, query, account) != NULL;
}

/*
 * The response to account's GET path?query if that is a request started in
 * the background (waiting for it to finish), in the caller's memory context;
 * NULL if it is not.  A body stopped over stripe_billing.max_response_size
 * (or for want of memory) raises SBA07 (or out of memory), as the request
 * made the usual way would.  When it is such a request, it is gone
 * after (its body freed); others are left in flight, to be taken later.
 */
SbHttpResponse *
sb_http_take_prefetched(const char *path, const char *query, const char *account)
{
	SbHttpResponse *response = NULL;
	PrefetchSlot *slot;

	/* (another request leaves them be: a backfill lists subscription items between its pages) */
	drop_old_prefetches();
	if ((slot = find_prefetch(path, query, account)) == NULL)
		return NULL;

	pump_prefetches(slot);
	if (!slot->done)
	{
		drop_prefetch(slot);	/* (libcurl failed us: asked again the usual way) */
		return NULL;
	}
	if (slot->result == CURLE_ABORTED_BY_CALLBACK)
	{
		drop_prefetch(slot);
		CHECK_FOR_INTERRUPTS();
		return NULL;
	}
	if (slot->result == CURLE_FILESIZE_EXCEEDED || slot->transfer.too_large ||
		slot->transfer.out_of_memory)
	{
		Transfer	stopped;

		/* (the same request would get the same answer: raised, not asked again) */
		memset(&stopped, 0, sizeof(stopped));
		stopped.too_large = slot->result == CURLE_FILESIZE_EXCEEDED || slot->transfer.too_large;
		stopped.out_of_memory = slot->transfer.out_of_memory;
		stopped.body_len = slot->transfer.body_len;
		drop_prefetch(slot);
		report_stopped_transfer("GET", path, &stopped);
	}

	/* copied into the caller's context; the body freed whatever happens */
	PG_TRY();
	{
		response = collect_response(slot->handle, slot->result, slot->errbuf, &slot->transfer);
	}
	PG_FINALLY();
	{
		drop_prefetch(slot);
	}
	PG_END_TRY();
	return response;
}

/*
 * POSTs several JSON bodies to base || path, at most parallel at once on
 * connections a multi handle of its own keeps between calls, authenticated
 * with secret, as account's (Stripe-Account; NULL: the platform's).
 * Returns one response per body, in order: a transport failure or a body
 * over stripe_billing.max_response_size comes back as status 0 with
 * network_error set, for the caller to retry.  An interrupt stops every
 * transfer and raises.
 */
SbHttpResponse **
sb_http_post_all(const char *base, const char *path, char **bodies, int n,
				 const char *secret, int parallel, const char *account)
{
	static CURLM *multi = NULL;
	SbHttpResponse **responses = palloc0(sizeof(SbHttpResponse *) * Max(n, 1));
	char	   *url = request_url(base, path, NULL);
	int			slots = Max(Min(parallel, n), 1);
	CURL	  **handles = palloc0(sizeof(CURL *) * slots);
	int		   *running_body = palloc(sizeof(int) * slots);		/* -1: idle */
	Transfer   *transfers = palloc0(sizeof(Transfer) * slots);
	char	  **errbufs = palloc(sizeof(char *) * slots);
	struct curl_slist *volatile headers = NULL;

	if (multi == NULL && (multi = curl_multi_init()) == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not create a libcurl multi handle")));
	for (int i = 0; i < slots; i++)
	{
		running_body[i] = -1;
		errbufs[i] = palloc(CURL_ERROR_SIZE);
	}
	(void) get_handle();		/* (curl_global_init) */
	headers = build_headers(secret, NULL, "application/json", account, NULL);

	PG_TRY();
	{
		int			next = 0;
		int			done = 0;

		for (int i = 0; i < slots; i++)
			if ((handles[i] = curl_easy_init()) == NULL)
				ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not create a libcurl handle")));
		while (done < n)
		{
			int			still;
			int			queued;
			CURLMsg    *msg;

			/* idle slots take the next bodies */
			for (int i = 0; i < slots && next < n; i++)
			{
				if (running_body[i] >= 0)
					continue;
				curl_easy_reset(handles[i]);
				init_transfer(&transfers[i]);
				errbufs[i][0] = '\0';
				set_options(handles[i], "POST", url, bodies[next], headers, &transfers[i], errbufs[i]);
				if (curl_multi_add_handle(multi, handles[i]) != CURLM_OK)
					ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not start a libcurl transfer")));
				running_body[i] = next++;
			}

			(void) curl_multi_perform(multi, &still);
			while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
			{
				int			i;

				if (msg->msg != CURLMSG_DONE)
					continue;
				for (i = 0; i < slots && handles[i] != msg->easy_handle; i++)
					;
				if (i == slots || running_body[i] < 0)
					continue;
				if (msg->data.result == CURLE_ABORTED_BY_CALLBACK)
					CHECK_FOR_INTERRUPTS();
				responses[running_body[i]] = collect_response(handles[i], msg->data.result, errbufs[i],
															  &transfers[i]);
				if (transfers[i].too_large || transfers[i].out_of_memory)
				{
					responses[running_body[i]]->status = 0;
					responses[running_body[i]]->network_error =
						psprintf("the response exceeds stripe_billing.max_response_size (%d kB)",
								 sb_max_response_size);
				}
				curl_multi_remove_handle(multi, handles[i]);
				free_transfer_body(&transfers[i]);
				running_body[i] = -1;
				done++;
			}
			if (done < n)
			{
				CHECK_FOR_INTERRUPTS();
				(void) curl_multi_poll(multi, NULL, 0, 100, NULL);
			}
		}
	}
	PG_FINALLY();
	{
		for (int i = 0; i < slots; i++)
		{
			if (handles[i] == NULL)
				continue;
			if (running_body[i] >= 0)
				curl_multi_remove_handle(multi, handles[i]);
			/* the header list holds the secret: no handle keeps a pointer to it */
			curl_easy_cleanup(handles[i]);
			free_transfer_body(&transfers[i]);
		}
		curl_slist_free_all(headers);
	}
	PG_END_TRY();
	return responses;
}

/* Appends text percent-encoded (curl's string is malloc'd: freed here). */
static void
append_escaped(StringInfo out, const char *text)
{
	char	   *escaped = curl_easy_escape(NULL, text, 0);

	if (escaped == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	appendStringInfoString(out, escaped);
	curl_free(escaped);
}

/* Appends one field, name and value percent-encoded, to a form. */
void
sb_form_append(StringInfo form, const char *name, const char *value)
{
	if (form->len > 0)
		appendStringInfoChar(form, '&');
	append_escaped(form, name);
	appendStringInfoChar(form, '=');
	append_escaped(form, value);
}

/*
 * Appends key=value pairs for a jsonb value in Stripe's form encoding:
 * objects as prefix[key], arrays as prefix[index], booleans as true/false,
 * null as an empty value (which unsets a field).
 */
static void
encode_value(StringInfo out, const char *prefix, JsonbValue *v)
{
	char	   *text;

	if (v->type == jbvBinary)
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		bool		is_array = JsonContainerIsArray(v->val.binary.data);
		int			index = 0;
		char	   *key = NULL;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = pnstrdup(elem.val.string.val, elem.val.string.len);
			else if (tok == WJB_VALUE || tok == WJB_ELEM)
			{
				char	   *name = is_array ?
					psprintf("%s[%d]", prefix, index++) :
					(prefix[0] ? psprintf("%s[%s]", prefix, key) : pstrdup(key));

				encode_value(out, name, &elem);
			}
		}
		return;
	}

	switch (v->type)
	{
		case jbvNull:
			text = "";
			break;
		case jbvBool:
			text = v->val.boolean ? "true" : "false";
			break;
		case jbvNumeric:
			text = DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
			break;
		case jbvString:
			text = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}

	sb_form_append(out, prefix, text);
}

/* Encodes a jsonb object of parameters the way Stripe's API reads them. */
char *
sb_form_encode(Jsonb *params)
{
	StringInfoData out;
	JsonbValue	root;

	initStringInfo(&out);
	if (params == NULL)
		return out.data;
	if (!JB_ROOT_IS_OBJECT(params))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Stripe API parameters must be a JSON object")));
	root.type = jbvBinary;
	root.val.binary.data = &params->root;
	root.val.binary.len = VARSIZE(params) - VARHDRSZ;
	encode_value(&out, "", &root);
	return out.data;
}
