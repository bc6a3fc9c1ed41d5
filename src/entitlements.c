/*-------------------------------------------------------------------------
 *
 * entitlements.c
 *	  stripe_has_entitlement: feature checks fast enough for row-level
 *	  security policies.
 *
 * The answers live in stripe_billing.user_features (user_ref, feature,
 * valid_until), derived in the transaction that applied the event.  Each
 * backend caches the rows it has looked up in a hash table.  Every change to
 * user_features fires a trigger that sends a relcache invalidation (the
 * idiom pg_cron uses for its job cache) for the table's primary key index,
 * not the table: an invalidation of the table would also throw away every
 * cached plan that reads it, and the next derivation, in this backend and
 * every other, would be planned again (a backfill spent most of its time
 * so); plans do not depend on an index's relcache entry.  Our callback
 * then marks the cache stale, in this backend at the next command and in
 * others when they next accept invalidation messages, which we make them do
 * once per statement.  A check is then a hash lookup and a time comparison.
 *
 * A cached answer must never outlive the truth it caches.  So a lookup does
 * not read with the query's snapshot (inside a REPEATABLE READ transaction,
 * or a statement that began before a revocation committed, that snapshot
 * predates the revocation whose invalidation we have just accepted, and the
 * stale answer would then be served to every later transaction): like the
 * catalog caches, it reads with a fresh catalog snapshot, taken after the
 * invalidations were accepted.  A commit not visible to that snapshot sends
 * its invalidation after it, so the next statement drops the answer.  The
 * price: a check answers from the latest committed state as of its lookup,
 * even inside an older snapshot (as catalog lookups do).
 *
 * Lookups read the table through its primary key index and write nothing:
 * checks work on a hot standby, where replayed commits carry the same
 * invalidations (applied after the commit became visible, as on a primary).
 * On a Citus cluster they read this node's placement of the table instead,
 * whose trigger sends the same invalidation on every node (see citus.c).
 *
 * A policy that asks the same question for every row, such as
 * USING (stripe_has_entitlement(current_setting('app.user_ref', true), 'f')),
 * would call us once a row.  Our planner support function turns such a call
 * into (SELECT stripe_has_entitlement(...)), which the planner evaluates once
 * per query (an InitPlan): the form the documentation used to ask for, and
 * the one Citus refuses to accept in a policy of a distributed table (it
 * allows no subquery there).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/pathnodes.h"
#include "nodes/supportnodes.h"
#include "optimizer/optimizer.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_has_entitlement);
PG_FUNCTION_INFO_V1(stripe_now);
PG_FUNCTION_INFO_V1(stripe_invalidate_entitlement_cache);
PG_FUNCTION_INFO_V1(stripe_has_entitlement_support);
PG_FUNCTION_INFO_V1(stripe_user_features_replicated);


/* Longest "user_ref \x1f feature" key cached; longer ones are looked up. */
#define KEY_MAX 256
#define KEY_SEPARATOR '\x1f'
/* A backend caching more answers than this starts over. */
#define CACHE_MAX_ENTRIES 200000

typedef struct CachedAnswer
{
	char		key[KEY_MAX];	/* hash key: user_ref, separator, feature */
	bool		granted;		/* a user_features row exists */
	TimestampTz valid_until;	/* DT_NOEND: no end */
} CachedAnswer;

static HTAB *answers = NULL;
/* The last answer given: a policy without row variables asks it every row. */
static CachedAnswer *last_answer = NULL;
static MemoryContext answers_context = NULL;
static bool answers_valid = false;
static bool callback_registered = false;

/*
 * user_features and its primary key, and what lookups read: the same, or on
 * a Citus cluster this node's placement of the table and its primary key.
 * Resolved once, and again after an invalidation of any of them.
 */
static Oid	features_relid = InvalidOid;
static Oid	features_pkey = InvalidOid;
static Oid	read_relid = InvalidOid;
static Oid	read_pkey = InvalidOid;
static bool features_replicated = false;
static bool features_resolved = false;
/* Counts the invalidations of the above (see resolve_features_table). */
static uint64 features_invalidations = 0;

/* The statement whose invalidations were last accepted. */
static LocalTransactionId checked_lxid = InvalidLocalTransactionId;
static TimestampTz checked_statement = 0;

/* stripe_billing.test_clock, parsed (see sb_now). */
static char *parsed_clock_text = NULL;
static TimestampTz parsed_clock = 0;

/*
 * Relcache callback: a change to user_features (signalled on its primary
 * key, or its placement's), the table itself (DDL, TRUNCATE; on Citus also
 * a change to its metadata, which Citus signals on the table) or
 * everything stales us.
 */
static void
entitlement_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == features_relid || relid == features_pkey ||
		relid == read_relid || relid == read_pkey)
	{
		answers_valid = false;
		features_resolved = false;	/* re-resolve: it may be a new table */
		features_invalidations++;
	}
}

/*
 * Resolves user_features, its primary key and what lookups read.  Reading
 * Citus's catalogs and opening the placement accept invalidations, and so
 * run our callback: one that concerns what we have read meanwhile (a
 * placement made or dropped, the table distributed) makes us read again.
 */
static void
resolve_features_table(void)
{
	for (;;)
	{
		uint64		invalidations = features_invalidations;
		Oid			nsp = get_namespace_oid("stripe_billing", true);
		Oid			placement = InvalidOid;
		Oid			placement_pkey = InvalidOid;

		features_relid = OidIsValid(nsp) ? get_relname_relid("user_features", nsp) : InvalidOid;
		features_pkey = OidIsValid(nsp) ? get_relname_relid("user_features_pkey", nsp) : InvalidOid;
		if (!OidIsValid(features_relid) || !OidIsValid(features_pkey))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("stripe_billing.user_features does not exist"),
					 errhint("Run CREATE EXTENSION stripe_billing in this database.")));
		features_replicated = sb_citus_features_placement(features_relid, &placement,
														  &placement_pkey);
		read_relid = features_replicated ? placement : features_relid;
		read_pkey = features_replicated ? placement_pkey : features_pkey;
		if (invalidations == features_invalidations)
			break;
	}
	features_resolved = true;
}

/* Makes the cache usable for this statement. */
static void
prepare_cache(void)
{
	LocalTransactionId lxid = MY_LXID;
	TimestampTz statement = GetCurrentStatementStartTimestamp();

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(entitlement_relcache_callback, (Datum) 0);
		callback_registered = true;
	}

	/*
	 * Once per statement, take in what other sessions committed, so the next
	 * statement after a revocation sees it.
	 */
	if (lxid != checked_lxid || statement != checked_statement)
	{
		AcceptInvalidationMessages();
		checked_lxid = lxid;
		checked_statement = statement;
	}

	if (!features_resolved)
		resolve_features_table();

	if (!answers_valid || (answers && hash_get_num_entries(answers) > CACHE_MAX_ENTRIES))
	{
		HASHCTL		ctl;

		if (answers_context == NULL)
			answers_context = AllocSetContextCreate(CacheMemoryContext,
													"stripe_billing entitlements",
													ALLOCSET_DEFAULT_SIZES);
		else
			MemoryContextReset(answers_context);
		ctl.keysize = KEY_MAX;
		ctl.entrysize = sizeof(CachedAnswer);
		ctl.hcxt = answers_context;
		answers = hash_create("stripe_billing entitlements", 1024, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		answers_valid = true;
		last_answer = NULL;
	}
}

/*
 * Reads the user_features row of (user_ref, feature) with a fresh catalog
 * snapshot (see the header comment).
 */
static void
lookup_feature(text *user_ref, text *feature, bool *granted, TimestampTz *valid_until)
{
	/* (opening the table may run our callback, which may re-resolve them) */
	Oid			relid = read_relid;
	Oid			pkey = read_pkey;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData keys[2];
	HeapTuple	tuple;

	/* the columns are COLLATE "C": scan keys of the C collation match */
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(user_ref));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(feature));

	rel = table_open(relid, AccessShareLock);
	/* no snapshot given: systable_beginscan takes (and registers) a fresh one */
	scan = systable_beginscan(rel, pkey, true, NULL, 2, keys);
	tuple = systable_getnext(scan);
	*granted = HeapTupleIsValid(tuple);
	*valid_until = DT_NOEND;
	if (*granted)
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, 3, RelationGetDescr(rel), &isnull);

		if (!isnull)
			*valid_until = DatumGetTimestampTz(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

/*
 * The time entitlement checks compare with: the transaction's start (now()),
 * or stripe_billing.test_clock when a superuser set one.
 */
TimestampTz
sb_now(void)
{
	if (sb_test_clock == NULL || sb_test_clock[0] == '\0')
		return GetCurrentTransactionStartTimestamp();

	if (parsed_clock_text == NULL || strcmp(parsed_clock_text, sb_test_clock) != 0)
	{
		parsed_clock = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
															   CStringGetDatum(sb_test_clock),
															   ObjectIdGetDatum(InvalidOid),
															   Int32GetDatum(-1)));
		if (parsed_clock_text)
			pfree(parsed_clock_text);
		parsed_clock_text = MemoryContextStrdup(TopMemoryContext, sb_test_clock);
	}
	return parsed_clock;
}

/* stripe_now() -> timestamptz */
Datum
stripe_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(sb_now());
}

/*
 * stripe_has_entitlement(user_ref text, feature text) -> boolean
 *
 * NULL or empty arguments answer false: inside a policy an error would fail
 * the whole query.
 */
Datum
stripe_has_entitlement(PG_FUNCTION_ARGS)
{
	text	   *user_ref;
	text	   *feature;
	int			user_len;
	int			feature_len;
	char		key[KEY_MAX];
	CachedAnswer *answer;
	bool		granted;
	TimestampTz valid_until;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	user_ref = PG_GETARG_TEXT_PP(0);
	feature = PG_GETARG_TEXT_PP(1);
	user_len = VARSIZE_ANY_EXHDR(user_ref);
	feature_len = VARSIZE_ANY_EXHDR(feature);
	if (user_len == 0 || feature_len == 0)
		PG_RETURN_BOOL(false);

	prepare_cache();

	if (user_len + feature_len + 2 <= KEY_MAX &&
		memchr(VARDATA_ANY(user_ref), KEY_SEPARATOR, user_len) == NULL)
	{
		memcpy(key, VARDATA_ANY(user_ref), user_len);
		key[user_len] = KEY_SEPARATOR;
		memcpy(key + user_len + 1, VARDATA_ANY(feature), feature_len);
		key[user_len + 1 + feature_len] = '\0';

		if (last_answer && strcmp(last_answer->key, key) == 0)
			answer = last_answer;
		else
			answer = hash_search(answers, key, HASH_FIND, NULL);
		if (answer == NULL)
		{
			/* look up first: an error must not leave a half-made entry */
			lookup_feature(user_ref, feature, &granted, &valid_until);
			answer = hash_search(answers, key, HASH_ENTER, NULL);
			answer->granted = granted;
			answer->valid_until = valid_until;
		}
		last_answer = answer;
		granted = answer->granted;
		valid_until = answer->valid_until;
	}
	else
		lookup_feature(user_ref, feature, &granted, &valid_until);

	PG_RETURN_BOOL(granted && (valid_until == DT_NOEND || sb_now() < valid_until));
}

/*
 * Does expr give one value for a whole query: no Var of any query level, no
 * aggregate, window function, subquery or set-returning function, no Param
 * but the query's own parameters, nothing volatile?
 */
static bool
varies_within_query(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) || IsA(node, PlaceHolderVar) || IsA(node, Aggref) ||
		IsA(node, GroupingFunc) || IsA(node, WindowFunc) || IsA(node, SubLink) ||
		IsA(node, SubPlan) || IsA(node, AlternativeSubPlan) || IsA(node, CurrentOfExpr) ||
		IsA(node, NextValueExpr))
		return true;
	if (IsA(node, Param) && ((Param *) node)->paramkind != PARAM_EXTERN)
		return true;
	return expression_tree_walker(node, varies_within_query, context);
}

/*
 * Planner support for stripe_has_entitlement: a call whose arguments are
 * the same for every row, in a query that reads a table, becomes the scalar
 * subquery (SELECT stripe_has_entitlement(...)), which the planner makes an
 * InitPlan, evaluated once per execution of the query.  This is what a
 * policy USING (stripe_has_entitlement(current_setting('app.user_ref',
 * true), 'reports')) needs: otherwise it costs a call per row (3.8 times
 * the cost of USING (true) over a million rows), and Citus refuses the
 * subquery written by hand in a policy of a distributed table.  STABLE
 * allows it: within one statement the answer may not change.
 *
 * The planner looks for SubLinks in what it simplifies only in queries that
 * say they have some, hence hasSubLinks.  The subquery we make reads no
 * table, so its own planning leaves the call inside it alone.
 */
Datum
stripe_has_entitlement_support(PG_FUNCTION_ARGS)
{
	Node	   *request = (Node *) PG_GETARG_POINTER(0);
	SupportRequestSimplify *simplify;
	Query	   *query;
	ListCell   *lc;
	bool		reads_table = false;
	Query	   *subquery;
	SubLink    *sublink;

	if (!IsA(request, SupportRequestSimplify))
		PG_RETURN_POINTER(NULL);
	simplify = (SupportRequestSimplify *) request;
	if (simplify->root == NULL || simplify->root->parse == NULL)
		PG_RETURN_POINTER(NULL);	/* not planning a query */
	query = simplify->root->parse;
	if (query->commandType != CMD_SELECT && query->commandType != CMD_UPDATE &&
		query->commandType != CMD_DELETE && query->commandType != CMD_INSERT &&
		query->commandType != CMD_MERGE)
		PG_RETURN_POINTER(NULL);
	foreach(lc, query->rtable)
	{
		if (lfirst_node(RangeTblEntry, lc)->rtekind == RTE_RELATION)
			reads_table = true;
	}
	if (!reads_table ||
		varies_within_query((Node *) simplify->fcall->args, NULL) ||
		contain_volatile_functions((Node *) simplify->fcall->args) ||
		expression_returns_set((Node *) simplify->fcall->args))
		PG_RETURN_POINTER(NULL);

	subquery = makeNode(Query);
	subquery->commandType = CMD_SELECT;
	subquery->querySource = QSRC_ORIGINAL;
	subquery->canSetTag = true;
	subquery->jointree = makeFromExpr(NIL, NULL);
	subquery->targetList = list_make1(makeTargetEntry((Expr *) copyObject(simplify->fcall), 1,
													  pstrdup("stripe_has_entitlement"), false));
	sublink = makeNode(SubLink);
	sublink->subLinkType = EXPR_SUBLINK;
	sublink->subselect = (Node *) subquery;
	sublink->location = -1;
	query->hasSubLinks = true;
	PG_RETURN_POINTER(sublink);
}

/*
 * stripe_billing._user_features_replicated() -> boolean
 *
 * Is user_features a Citus reference table?  Derivations then write it in
 * a shape Citus can run (see _refresh_replicated_features).
 */
Datum
stripe_user_features_replicated(PG_FUNCTION_ARGS)
{
	prepare_cache();
	PG_RETURN_BOOL(features_replicated);
}

/*
 * Trigger on user_features: tell every backend its cache is stale, through
 * the relcache entry of the table's primary key (see the top of the file).
 */
Datum
stripe_invalidate_entitlement_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			pkey;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "stripe_invalidate_entitlement_cache: not called as a trigger");
	pkey = sb_primary_key_index(trigdata->tg_relation);
	CacheInvalidateRelcacheByRelid(OidIsValid(pkey) ? pkey : RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
