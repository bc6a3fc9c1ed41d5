/*-------------------------------------------------------------------------
 *
 * locks.c
 *	  One global order for the locks that applying events takes.
 *
 * Every event reaches the database twice by design, by webhook and by
 * polling, often at the same moment, and a worker's page or a batch applies
 * many events in one transaction.  If two appliers took the locks they need
 * in different orders, each could wait for the other: a deadlock, an aborted
 * webhook.  So every unit of application (one event, a page or batch of
 * events, a page of listed snapshots, an API answer, a link) takes its
 * locks in these levels, one after the other, and within a level in one
 * global order:
 *
 *   0. ledger rows: a unit's events are recorded first, in id order
 *      (events.c); a duplicate waits here for the other delivery's commit;
 *   1. the apply lock, shared; or exclusive for a unit too big to lock its
 *      objects one by one (more than SB_MAX_KEYS keys), which then needs
 *      no other key;
 *   2. object keys: one per Stripe object whose row the unit may write, and
 *      one per customer whose link or users' features it may change, in
 *      key order.  A customer an object does not name (a dispute's: its
 *      charge's) is read from the rows that name it (customers_of_rows)
 *      before the keys are taken, and again once they are held: when it
 *      changed meanwhile, the keys are given back, nothing having been
 *      written under them, and taken again in key order with its;
 *   3. user keys: one per user whose features it may derive (the users
 *      linked to those customers, read once the customers' keys are held,
 *      and the users the objects name), in key order.
 *
 * Then it writes rows.  Two units that write the same row hold a common
 * key, so between appliers rows are never waited for, whatever order the
 * unit writes them in, and derivations may run in any order.  A unit that
 * changes a user's inputs (a link, a subscription, entitlements) holds its
 * customer's key, so a derivation reads a state no concurrent unit is
 * still changing: in READ COMMITTED, a statement after the wait sees the
 * other unit's commit.  A REPEATABLE READ or SERIALIZABLE transaction
 * cannot see it, so when it had to wait it fails with 40001, as it would
 * on a row updated concurrently.
 *
 * The keys are advisory locks of classes of our own (the locktag's fourth
 * field; SQL's pg_advisory_* use 1 and 2, so they never meet an
 * application's), keyed by a 64-bit hash of the object: pg_locks shows them
 * as advisory locks with objsubid 21329..21331.  A hash collision only makes
 * two units wait for each other.  A unit holds one transaction-level lock
 * per key, in the shared lock table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "storage/proc.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "stripe_billing.h"
#include "kinds.h"

PG_FUNCTION_INFO_V1(stripe_lock_keys);
PG_FUNCTION_INFO_V1(stripe_lock_objects);

/* Lock classes: the advisory locktag's fourth field ("SQ", "SR", "SS"). */
#define CLASS_APPLY		0x5351
#define CLASS_OBJECT	0x5352
#define CLASS_USER		0x5353

/* Keys beyond which a unit takes the apply lock exclusively instead. */
#define SB_MAX_KEYS		1000

/* The keys this transaction took (an overestimate after a rollback to a savepoint). */
static LocalTransactionId counted_lxid = InvalidLocalTransactionId;
static int	keys_taken = 0;

typedef struct LockKey
{
	uint16		class;
	uint64		hash;
} LockKey;

/* A row whose customer's key a unit needs (SbObjectKind.customers_of_rows). */
typedef struct RowRef
{
	const char *table;			/* in schema stripe_billing (from kinds.c) */
	text	   *id;
} RowRef;

struct SbLockSet
{
	LockKey    *keys;			/* object keys, then user keys once acquired */
	int			nkeys;
	int			size;
	List	   *customers;		/* ids (text datums) whose users to look up */
	List	   *users;			/* user refs (text datums) named by the objects */
	List	   *rows;			/* RowRefs whose customers to look up */
};

SbLockSet *
sb_lockset_create(void)
{
	SbLockSet  *set = palloc0(sizeof(SbLockSet));

	set->size = 16;
	set->keys = palloc(sizeof(LockKey) * set->size);
	return set;
}

static void
add_hash(SbLockSet *set, uint16 class, const char *kind, const char *id, int len)
{
	StringInfoData key;

	initStringInfo(&key);
	if (kind)
		appendStringInfo(&key, "%s:", kind);
	appendBinaryStringInfo(&key, id, len);
	if (set->nkeys == set->size)
	{
		set->size *= 2;
		set->keys = repalloc(set->keys, sizeof(LockKey) * set->size);
	}
	set->keys[set->nkeys].class = class;
	set->keys[set->nkeys].hash = hash_bytes_extended((unsigned char *) key.data, key.len, 0);
	set->nkeys++;
	pfree(key.data);
}

/* A key for the row of a Stripe object of this kind ("invoice", ...). */
void
sb_lockset_add_key(SbLockSet *set, const char *kind, const char *id, int len)
{
	if (id == NULL || len <= 0)
		return;
	add_hash(set, CLASS_OBJECT, kind, id, len);
}

/* A customer's key; its linked users are locked too. */
void
sb_lockset_add_customer(SbLockSet *set, const char *id, int len)
{
	if (id == NULL || len <= 0)
		return;
	add_hash(set, CLASS_OBJECT, "customer", id, len);
	set->customers = lappend(set->customers, cstring_to_text_with_len(id, len));
}

/* A user whose features the unit may derive. */
void
sb_lockset_add_user(SbLockSet *set, const char *user_ref, int len)
{
	if (user_ref == NULL || len <= 0)
		return;
	set->users = lappend(set->users, cstring_to_text_with_len(user_ref, len));
}

/*
 * An id field: a string, or an expanded object's "id" (as
 * stripe_billing._id reads it).  False when absent or of another type.
 */
static bool
id_field(JsonbContainer *object, const char *key, const char **id, int *len)
{
	JsonbValue	buf;
	JsonbValue	idbuf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);

	if (v && v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
		v = sb_jsonb_key(v->val.binary.data, "id", &idbuf);
	if (v == NULL || v->type != jbvString)
		return false;
	*id = v->val.string.val;
	*len = v->val.string.len;
	return true;
}

/* A scalar as ->> reads it; false for null, absent or a container. */
static bool
text_field(JsonbContainer *object, const char *key, const char **text, int *len)
{
	JsonbValue	buf;
	JsonbValue *v = sb_jsonb_key(object, key, &buf);

	if (v == NULL)
		return false;
	switch (v->type)
	{
		case jbvString:
			*text = v->val.string.val;
			*len = v->val.string.len;
			return true;
		case jbvNumeric:
			*text = DatumGetCString(DirectFunctionCall1(numeric_out,
														NumericGetDatum(v->val.numeric)));
			*len = strlen(*text);
			return true;
		case jbvBool:
			*text = v->val.boolean ? "true" : "false";
			*len = strlen(*text);
			return true;
		default:
			return false;
	}
}

/* Where the keys of an object go, as its paths are walked. */
typedef struct KeyWalk
{
	SbLockSet  *set;
	const char *row_kind;		/* the kind of the rows whose ids are walked,
								 * and for ids an account chooses, the account */
	bool		user_found;		/* a user_refs path named one */
	const char *table;			/* the table of the customers_of_rows walked */
} KeyWalk;

typedef void (*KeyWalkFn) (KeyWalk *walk, JsonbContainer *parent, const char *key);

/*
 * Calls fn for the value at a dotted path of object (see SbField), each one
 * found: "name[]" walks every element of an array.  Intermediate values of
 * another type (or absent) lead nowhere: the shape check, which runs once
 * the locks are taken, reports them.
 */
static void
walk_path(KeyWalk *walk, JsonbContainer *object, const char *path, KeyWalkFn fn)
{
	const char *dot = strchr(path, '.');
	char	   *seg;
	size_t		len;
	bool		each;
	JsonbValue	buf;
	JsonbValue *v;

	if (dot == NULL)
	{
		fn(walk, object, path);
		return;
	}
	len = dot - path;
	each = len > 2 && strncmp(dot - 2, "[]", 2) == 0;
	seg = pnstrdup(path, each ? len - 2 : len);
	v = sb_jsonb_key(object, seg, &buf);
	pfree(seg);
	if (v == NULL || v->type != jbvBinary)
		return;
	if (!each)
	{
		if (JsonContainerIsObject(v->val.binary.data))
			walk_path(walk, v->val.binary.data, dot + 1, fn);
		return;
	}
	if (!JsonContainerIsArray(v->val.binary.data))
		return;
	for (uint32 i = 0; i < JsonContainerSize(v->val.binary.data); i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(v->val.binary.data, i);

		if (elem->type == jbvBinary && JsonContainerIsObject(elem->val.binary.data))
			walk_path(walk, elem->val.binary.data, dot + 1, fn);
	}
}

/* A row's key, from its id field. */
static void
add_row_key(KeyWalk *walk, JsonbContainer *parent, const char *key)
{
	const char *id;
	int			len;

	if (id_field(parent, key, &id, &len))
		sb_lockset_add_key(walk->set, walk->row_kind, id, len);
}

/* A customer's key, from its id field. */
static void
add_customer_key(KeyWalk *walk, JsonbContainer *parent, const char *key)
{
	const char *id;
	int			len;

	if (id_field(parent, key, &id, &len))
		sb_lockset_add_customer(walk->set, id, len);
}

/* The first user named: a non-empty scalar, as _user_ref and ->> read it. */
static void
add_user_key(KeyWalk *walk, JsonbContainer *parent, const char *key)
{
	const char *user;
	int			len;

	if (!walk->user_found && text_field(parent, key, &user, &len) && len > 0)
	{
		sb_lockset_add_user(walk->set, user, len);
		walk->user_found = true;
	}
}

/* A row whose customer's key the unit needs, read once the keys are taken. */
static void
add_row_customer(KeyWalk *walk, JsonbContainer *parent, const char *key)
{
	const char *id;
	int			len;
	RowRef	   *ref;

	if (!id_field(parent, key, &id, &len) || len <= 0)
		return;
	ref = palloc(sizeof(RowRef));
	ref->table = walk->table;
	ref->id = cstring_to_text_with_len(id, len);
	walk->set->rows = lappend(walk->set->rows, ref);
}

/*
 * The keys a Stripe object's mapping needs, as its kind declares them
 * (kinds.c): the rows it may write, its customer's where it may link the
 * customer or change what the customer's users are entitled to, and the
 * user it names; and the rows whose customers it may change the features
 * of, whose keys sb_lockset_acquire adds.
 */
void
sb_lockset_add_object(SbLockSet *set, JsonbContainer *object, const char *kind_name,
					  const char *account)
{
	const SbObjectKind *kind;
	KeyWalk		walk = {set, NULL, false, NULL};

	if (kind_name == NULL || (kind = sb_object_kind(kind_name)) == NULL)
		return;
	walk.row_kind = kind->row_kind;
	if (account)
	{
		/* the account's row (noted on first sight) */
		sb_lockset_add_key(set, "account", account, strlen(account));
		/*
		 * a product's, a price's or a coupon's id is the account's choice:
		 * unique in it only
		 */
		if (kind->row_kind && (strcmp(kind->row_kind, "product") == 0 ||
							   strcmp(kind->row_kind, "price") == 0 ||
							   strcmp(kind->row_kind, "coupon") == 0))
			walk.row_kind = psprintf("%s@%s", kind->row_kind, account);
	}
	for (int i = 0; i < lengthof(kind->row_ids) && kind->row_ids[i]; i++)
		walk_path(&walk, object, kind->row_ids[i], add_row_key);
	if (kind->customer)
		walk_path(&walk, object, kind->customer, add_customer_key);
	for (int i = 0; i < lengthof(kind->user_refs) && kind->user_refs[i]; i++)
		walk_path(&walk, object, kind->user_refs[i], add_user_key);
	for (int i = 0; i < lengthof(kind->customers_of_rows) && kind->customers_of_rows[i].table; i++)
	{
		walk.table = kind->customers_of_rows[i].table;
		walk_path(&walk, object, kind->customers_of_rows[i].path, add_row_customer);
	}
}

/* Is this customer among the set's? */
static bool
has_customer(SbLockSet *set, text *customer)
{
	ListCell   *lc;

	foreach(lc, set->customers)
	{
		text	   *c = (text *) lfirst(lc);

		if (VARSIZE_ANY_EXHDR(c) == VARSIZE_ANY_EXHDR(customer) &&
			memcmp(VARDATA_ANY(c), VARDATA_ANY(customer), VARSIZE_ANY_EXHDR(c)) == 0)
			return true;
	}
	return false;
}

/*
 * Adds the customers of the set's rows (customers_of_rows: a dispute's
 * charge's, and the dispute's own) that it does not have yet, as committed
 * now; returns whether it added any.  A table the installed SQL lacks
 * (before ALTER EXTENSION UPDATE) has no rows.  The caller is connected to
 * SPI.
 */
static bool
add_customers_of_rows(SbLockSet *set)
{
	Oid			nsp;
	bool		added = false;
	List	   *tables = NIL;
	ListCell   *lc;

	if (set->rows == NIL || !OidIsValid(nsp = get_namespace_oid("stripe_billing", true)))
		return false;
	foreach(lc, set->rows)
		tables = list_append_unique_ptr(tables, (void *) ((RowRef *) lfirst(lc))->table);
	foreach(lc, tables)
	{
		const char *table = (const char *) lfirst(lc);
		Datum	   *ids = palloc(sizeof(Datum) * list_length(set->rows));
		int			nids = 0;
		ListCell   *rc;
		Oid			argtype = TEXTARRAYOID;
		Datum		arg;

		if (!OidIsValid(get_relname_relid(table, nsp)))
			continue;
		foreach(rc, set->rows)
			if (((RowRef *) lfirst(rc))->table == table)
				ids[nids++] = PointerGetDatum(((RowRef *) lfirst(rc))->id);
		arg = PointerGetDatum(construct_array(ids, nids, TEXTOID, -1, false, TYPALIGN_INT));
		/* (not read-only: a statement of its own, which sees the latest commits) */
		if (SPI_execute_with_args(psprintf("SELECT DISTINCT r.customer FROM stripe_billing.%s r"
										   " WHERE r.id OPERATOR(pg_catalog.=) ANY ($1)"
										   " AND r.customer IS NOT NULL",
										   quote_identifier(table)),
								  1, &argtype, &arg, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the customers of the rows to lock");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			text	   *customer = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[r],
																SPI_tuptable->tupdesc, 1, &isnull));

			if (!isnull && !has_customer(set, customer))
			{
				sb_lockset_add_customer(set, VARDATA_ANY(customer), VARSIZE_ANY_EXHDR(customer));
				added = true;
			}
		}
		pfree(ids);
	}
	return added;
}

static int
key_cmp(const void *a, const void *b)
{
	const LockKey *x = (const LockKey *) a;
	const LockKey *y = (const LockKey *) b;

	if (x->class != y->class)
		return x->class < y->class ? -1 : 1;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return 0;
}

/* Sorts keys[from..] and drops repeats; returns the new count. */
static int
sort_unique(LockKey *keys, int from, int n)
{
	int			out = from;

	if (n - from > 1)
		qsort(keys + from, n - from, sizeof(LockKey), key_cmp);
	for (int i = from; i < n; i++)
		if (out == from || key_cmp(&keys[out - 1], &keys[i]) != 0)
			keys[out++] = keys[i];
	return out;
}

/* Lets a key go that nothing was written under yet (sb_lockset_acquire). */
static void
give_back(uint16 class, uint64 hash, LOCKMODE mode)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (hash >> 32), (uint32) hash, class);
	(void) LockRelease(&tag, mode, false);
}

/*
 * Takes one lock; in a transaction whose snapshot was taken before a wait,
 * what the holder committed meanwhile is invisible: fail with 40001.
 */
static void
take(uint16 class, uint64 hash, LOCKMODE mode)
{
	LOCKTAG		tag;
	LockAcquireResult result;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (hash >> 32), (uint32) hash, class);
	result = LockAcquire(&tag, mode, false, true);
	if (result == LOCKACQUIRE_OK)
		keys_taken++;
	if (result != LOCKACQUIRE_NOT_AVAIL)
		return;
	(void) LockAcquire(&tag, mode, false, false);
	keys_taken++;
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to a concurrent change of the same Stripe objects"),
				 errdetail("Another transaction applied a change to the same customers, objects or users meanwhile, which this transaction's snapshot cannot see."),
				 errhint("Retry the transaction, or apply Stripe's events in READ COMMITTED.")));
}

/* The users linked to the set's customers, added to its users. */
static void
add_linked_users(SbLockSet *set)
{
	static SPIPlanPtr plan = NULL;
	int			n = list_length(set->customers);
	Datum	   *elems;
	Datum		arg;
	ListCell   *lc;
	int			i = 0;

	if (n == 0)
		return;
	if (plan == NULL)
	{
		Oid			type = TEXTARRAYOID;

		plan = SPI_prepare("SELECT c.user_ref FROM stripe_billing.customers c"
						   " WHERE c.id OPERATOR(pg_catalog.=) ANY ($1) AND c.user_ref IS NOT NULL",
						   1, &type);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	elems = palloc(sizeof(Datum) * n);
	foreach(lc, set->customers)
		elems[i++] = PointerGetDatum(lfirst(lc));
	arg = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the users of the customers to lock");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		Datum		user = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			set->users = lappend(set->users, DatumGetTextPP(user));
	}
}

/* Does this transaction hold the apply lock exclusively (no key needed)? */
static bool
applying_alone(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, CLASS_APPLY);
	return sb_lock_held_by_me(&tag, ExclusiveLock);
}

/*
 * Takes the set's locks in the global order (see the file header): the
 * apply lock, the object keys, then the users' keys.  The caller is
 * connected to SPI (the customers' users are read).  The set is spent.
 */
void
sb_lockset_acquire(SbLockSet *set)
{
	int			nobjects;
	int			estimate;
	ListCell   *lc;

	if (counted_lxid != MY_LXID)
	{
		counted_lxid = MY_LXID;
		keys_taken = 0;
	}
	if (applying_alone())
		return;
	/* the customers of rows, as committed now (checked again below) */
	add_customers_of_rows(set);
	nobjects = sort_unique(set->keys, 0, set->nkeys);
	estimate = nobjects + list_length(set->customers) + list_length(set->users);
	if (keys_taken + estimate > SB_MAX_KEYS)
	{
		/*
		 * Every other unit holds the apply lock shared: none runs meanwhile,
		 * and this transaction needs no other key.  (A transaction of many
		 * units, a loop of stripe_apply_event, gets here once it has taken
		 * a thousand keys: it then upgrades its shared lock, and two such
		 * transactions at once can deadlock.  Apply big sets of events in
		 * one stripe_apply_events call, or one transaction at a time.)
		 */
		take(CLASS_APPLY, 0, ExclusiveLock);
		return;
	}
	take(CLASS_APPLY, 0, ShareLock);
	for (;;)
	{
		for (int i = 0; i < nobjects; i++)
			take(set->keys[i].class, set->keys[i].hash, ExclusiveLock);

		/*
		 * The customers of rows were read before the rows' keys were held:
		 * a unit that held them may have changed one meanwhile (a charge
		 * applied just after its dispute was looked at).  Read again, now
		 * that no unit can; when a customer is new, give the keys back
		 * (nothing was written under them) and take them all again in the
		 * one order, with its key.
		 */
		if (!add_customers_of_rows(set))
			break;
		for (int i = nobjects - 1; i >= 0; i--)
			give_back(set->keys[i].class, set->keys[i].hash, ExclusiveLock);
		nobjects = sort_unique(set->keys, 0, set->nkeys);
		CHECK_FOR_INTERRUPTS();
	}

	/* the users linked now: a link changes only under its customer's key */
	add_linked_users(set);
	set->nkeys = nobjects;
	foreach(lc, set->users)
	{
		text	   *user = (text *) lfirst(lc);

		add_hash(set, CLASS_USER, NULL, VARDATA_ANY(user), VARSIZE_ANY_EXHDR(user));
	}
	set->nkeys = sort_unique(set->keys, nobjects, set->nkeys);
	for (int i = nobjects; i < set->nkeys; i++)
		take(set->keys[i].class, set->keys[i].hash, ExclusiveLock);
}

/* Adds each non-null element of a text[] argument through add. */
static void
add_text_array(SbLockSet *set, ArrayType *array,
			   void (*add) (SbLockSet *set, const char *s, int len))
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
		{
			text	   *t = DatumGetTextPP(elems[i]);

			add(set, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
}

/* An object key given as "kind:id". */
static void
add_kind_id(SbLockSet *set, const char *s, int len)
{
	const char *colon = memchr(s, ':', len);

	if (colon == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an object key must be \"kind:id\", not \"%.*s\"", Min(len, 100), s)));
	if (colon - s == 8 && memcmp(s, "customer", 8) == 0)
		sb_lockset_add_customer(set, colon + 1, len - (colon + 1 - s));
	else
		add_hash(set, CLASS_OBJECT, NULL, s, len);
}

/*
 * stripe_billing._lock_keys(objects text[], customers text[], users text[])
 *
 * A unit of SQL (a link, a derivation of every user, the rows a
 * reconciliation resets) takes its keys: objects as "kind:id", customers
 * (with their linked users), users.
 */
Datum
stripe_lock_keys(PG_FUNCTION_ARGS)
{
	SbLockSet  *set = sb_lockset_create();

	if (!PG_ARGISNULL(0))
		add_text_array(set, PG_GETARG_ARRAYTYPE_P(0), add_kind_id);
	if (!PG_ARGISNULL(1))
		add_text_array(set, PG_GETARG_ARRAYTYPE_P(1), sb_lockset_add_customer);
	if (!PG_ARGISNULL(2))
		add_text_array(set, PG_GETARG_ARRAYTYPE_P(2), sb_lockset_add_user);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sb_lockset_acquire(set);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * stripe_billing._lock_objects(objects jsonb, account text)
 *
 * The keys a list of Stripe objects (of the account) needs, as applying
 * them would take:
 * for SQL that writes their rows before applying them (reconciliation).
 */
Datum
stripe_lock_objects(PG_FUNCTION_ARGS)
{
	Jsonb	   *objects;
	char	   *account = PG_NARGS() > 1 && !PG_ARGISNULL(1) ?
		text_to_cstring(PG_GETARG_TEXT_PP(1)) : NULL;
	SbLockSet  *set = sb_lockset_create();
	int			n;

	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	objects = PG_GETARG_JSONB_P(0);
	if (account && !sb_is_account_id(account))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account must be a connected account's id, not \"%.100s\"", account)));
	if (!JB_ROOT_IS_ARRAY(objects) || JB_ROOT_IS_SCALAR(objects))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("objects must be a jsonb array")));
	n = JB_ROOT_COUNT(objects);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(&objects->root, i);
		JsonbValue	buf;
		JsonbValue *kind;

		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			continue;
		kind = sb_jsonb_key(v->val.binary.data, "object", &buf);
		if (kind && kind->type == jbvString)
			sb_lockset_add_object(set, v->val.binary.data,
								  pnstrdup(kind->val.string.val, kind->val.string.len), account);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sb_lockset_acquire(set);
	SPI_finish();
	PG_RETURN_VOID();
}
