/*-------------------------------------------------------------------------
 *
 * citus.c
 *	  Where entitlement checks read on a Citus cluster.
 *
 * On a Citus cluster stripe_billing.user_features is a reference table
 * (see sql/chapters/50_citus.sql): on every node the table of that name is
 * an empty shell, and the rows are in the node's placement of the table's
 * one shard, user_features_<shardid>, which Citus writes on every node in
 * the coordinator's transaction (two-phase commit).  The placement carries
 * a copy of our trigger, so a change sends the same relcache invalidation
 * on each node, for the placement's primary key.  A check on any node then
 * reads its own placement, as a check on one node reads the table.
 *
 * We do not link against Citus: its catalogs are read by name, and only
 * when the table is (re)resolved, never per check.  A node that could not
 * answer truly says so with an error rather than answering false: a worker
 * node whose user_features is not replicated, a node without a placement,
 * a user_features distributed by hash.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "fmgr.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_citus_worker_node);

/* pg_dist_partition.partmethod of a reference table (and a Citus local one) */
#define CITUS_DISTRIBUTE_BY_NONE 'n'

/*
 * The value of column "column" in the first row of Citus catalog "catalog"
 * whose first column equals key (every catalog used here is keyed by its
 * first column, the Citus table's OID, with an index named index), or of
 * its only row when key is InvalidOid.  Returns false when there is no such
 * row, or no such catalog (no Citus here).
 */
static bool
citus_catalog_value(const char *catalog, const char *index, Oid key,
					const char *column, Datum *value, bool *isnull)
{
	Oid			catalog_relid = get_relname_relid(catalog, PG_CATALOG_NAMESPACE);
	Oid			index_relid = index ? get_relname_relid(index, PG_CATALOG_NAMESPACE) : InvalidOid;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData scankey;
	HeapTuple	tuple;
	AttrNumber	attnum;
	bool		found;

	if (!OidIsValid(catalog_relid))
		return false;
	attnum = get_attnum(catalog_relid, column);
	if (attnum == InvalidAttrNumber)
		elog(ERROR, "column %s of Citus catalog %s not found", column, catalog);

	rel = table_open(catalog_relid, AccessShareLock);
	if (OidIsValid(key))
		ScanKeyInit(&scankey, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(key));
	scan = systable_beginscan(rel, index_relid, OidIsValid(index_relid), NULL,
							  OidIsValid(key) ? 1 : 0, &scankey);
	tuple = systable_getnext(scan);
	found = HeapTupleIsValid(tuple);
	if (found)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);

		*value = heap_getattr(tuple, attnum, RelationGetDescr(rel), isnull);
		if (!*isnull)
			*value = datumCopy(*value, att->attbyval, att->attlen);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * This node's Citus group: 0 on the coordinator (and on a node not added to
 * a cluster yet), -1 without Citus in this database.
 */
static int32
citus_local_group(void)
{
	Datum		value;
	bool		isnull;

	if (!citus_catalog_value("pg_dist_local_group", NULL, InvalidOid, "groupid", &value, &isnull) ||
		isnull)
		return -1;
	return DatumGetInt32(value);
}

/*
 * The relation and primary key index that checks on this node read for
 * user_features (relid): the table itself (returns false) when it is an
 * ordinary table, or this node's placement of it (returns true) when it is
 * a Citus reference table.  Raises when neither would answer truly.
 */
bool
sb_citus_features_placement(Oid relid, Oid *placement, Oid *placement_pkey)
{
	Datum		value;
	bool		isnull;
	char		partmethod;
	int64		shardid;
	char		name[NAMEDATALEN];
	Oid			nsp = get_rel_namespace(relid);
	Oid			shard_relid;
	Oid			shard_pkey = InvalidOid;

	if (!citus_catalog_value("pg_dist_partition", "pg_dist_partition_logical_relid_index", relid,
							 "partmethod", &value, &isnull))
	{
		/*
		 * Not a Citus table: fine on the coordinator (before setup), but a
		 * worker node's copy of the table is empty and stays so.
		 */
		if (citus_local_group() > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("stripe_billing.user_features is not a reference table on this Citus cluster"),
					 errdetail("Entitlement checks on a worker node read the coordinator's entitlements through Citus's placement of that table, which is missing."),
					 errhint("Run SELECT stripe_billing.stripe_citus_setup() on the coordinator.")));
		return false;
	}
	partmethod = isnull ? '\0' : DatumGetChar(value);
	if (partmethod != CITUS_DISTRIBUTE_BY_NONE)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stripe_billing.user_features is distributed, not a reference table"),
				 errdetail("A check reads every user's entitlements from a copy on its own node."),
				 errhint("Run SELECT undistribute_table('stripe_billing.user_features') and then SELECT stripe_billing.stripe_citus_setup() on the coordinator.")));

	if (!citus_catalog_value("pg_dist_shard", "pg_dist_shard_logical_relid_index", relid,
							 "shardid", &value, &isnull) || isnull)
		elog(ERROR, "reference table stripe_billing.user_features has no shard");
	shardid = DatumGetInt64(value);

	/* Citus names a shard after its table (short names are not truncated) */
	snprintf(name, sizeof(name), "user_features_" INT64_FORMAT, shardid);
	shard_relid = get_relname_relid(name, nsp);
	if (OidIsValid(shard_relid))
	{
		Relation	rel = table_open(shard_relid, AccessShareLock);

		shard_pkey = sb_primary_key_index(rel);
		table_close(rel, AccessShareLock);
	}
	if (!OidIsValid(shard_relid) || !OidIsValid(shard_pkey))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node has no placement of the reference table stripe_billing.user_features"),
				 errdetail("Entitlement checks read the placement on their own node."),
				 errhint("Run SELECT replicate_reference_tables() on the coordinator.")));
	*placement = shard_relid;
	*placement_pkey = shard_pkey;
	return true;
}

/*
 * stripe_billing._citus_worker_node() -> boolean
 *
 * Is this a Citus worker node?  The background worker keeps off them: the
 * billing state lives on the coordinator.
 */
Datum
stripe_citus_worker_node(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(citus_local_group() > 0);
}
