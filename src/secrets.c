/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Keeping the secret settings out of messages.
 *
 * Secrets (stripe_billing.api_key, stripe_billing.webhook_secret, and
 * literals that look like Stripe's keys) are scrubbed from every message
 * this process emits (server log and client alike), and from error texts
 * the extension stores; a statement that carries one is not logged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tcop/tcopprot.h"

#include "stripe_billing.h"

/* The emit_log_hook found at load, called first. */
static emit_log_hook_type prev_emit_log_hook = NULL;

/* Key prefixes Stripe gives its secrets; literals starting so are scrubbed. */
static const char *const secret_prefixes[] = {
	"whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_"
};

/* Names of the secret settings; statements naming them are never logged. */
static const char *const secret_settings[] = {
	"stripe_billing.api_key", "stripe_billing.webhook_secret"
};

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

/* Installs the scrubbing emit_log_hook (from _PG_init). */
void
sb_install_secret_scrubber(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = scrub_secrets_hook;
}
