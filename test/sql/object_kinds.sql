-- The table of object kinds (src/kinds.c), and the promise of its field
-- lists: every field an _apply_* function reads from its object is one the
-- shape check validates first.  The fields read are taken from each
-- function's source: chains of -> and ->> with literal keys from the object
-- (o), from a jsonb variable set from one (items := o->'items'->'data'),
-- from the elements of an array of it (jsonb_array_elements(items) i), the
-- metadata keys _user_ref reads, and the fields of objects applied again as
-- another kind (a charge's refunds).  Where a function applies several
-- kinds, only the kind's own branch counts: CASE p.kind WHEN '<kind>' ...
-- and CASE WHEN is_plan THEN <plan> ELSE <price> END, with is_plan set
-- from o->>'object'.  Any other access to the object is reported as
-- unreadable here, so that nothing escapes the check.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;

SELECT kind, event_types, ignored_event_types, apply_function
  FROM _object_kinds() ORDER BY kind;

-- Each kind's apply function's source, narrowed to what it runs for that
-- kind.
CREATE TEMP TABLE kind_source AS
WITH k AS (
  SELECT k.kind, k.apply_function, k.fields, p.prosrc COLLATE "default" AS src
    FROM _object_kinds() k
    JOIN pg_proc p ON p.proname = k.apply_function AND p.pronamespace = 'stripe_billing'::regnamespace
),
-- CASE <d> WHEN '<kind>' THEN ... END CASE, <d> set from o->>'object'
by_case AS (
  SELECT k.*, (regexp_match(src, '([a-z_.]+) := o->>''object''\s*;'))[1] AS d FROM k
),
cased AS (
  SELECT kind, apply_function, fields,
         CASE WHEN d IS NULL OR strpos(src, 'CASE ' || d) = 0 THEN src
              ELSE left(src, strpos(src, 'CASE ' || d) - 1)
                   || coalesce((SELECT b FROM regexp_split_to_table(
                                  substr(src, strpos(src, 'CASE ' || d), strpos(src, 'END CASE') - strpos(src, 'CASE ' || d)),
                                  '\n\s*WHEN ''') b
                                 WHERE b LIKE kind || ''' THEN%'), '')
                   || substr(src, strpos(src, 'END CASE')) END AS src
    FROM by_case
),
-- CASE WHEN <flag> THEN <for kind K> ELSE <for the others> END, <flag>
-- boolean := o->>'object' = 'K'
flagged AS (
  SELECT c.*, f[1] AS flag, f[2] AS flag_kind
    FROM cased c LEFT JOIN LATERAL regexp_match(c.src, '(\w+) boolean := o->>''object'' = ''([a-z_.]+)''') f ON true
)
SELECT kind, apply_function, fields,
       CASE WHEN flag IS NULL THEN src
            ELSE regexp_replace(src, 'CASE WHEN ' || flag || ' THEN (.*?) ELSE (.*?) END',
                                CASE WHEN kind = flag_kind THEN '\1' ELSE '\2' END, 'g') END AS src
  FROM flagged;

-- The names the object goes by, and the path each stands for: o itself,
-- jsonb variables set from a path of it, elements of an array of either.
CREATE TEMP TABLE kind_alias AS
WITH RECURSIVE a(kind, alias, path) AS (
  SELECT kind, 'o', '' FROM kind_source
  UNION
  SELECT s.kind, m.v[1],
         concat_ws('.', nullif(a.path, ''),
                   nullif(array_to_string(ARRAY(SELECT x[1] FROM regexp_matches(m.v[3], '''([^'']+)''', 'g') x), '.'), ''))
         || m.v[4]
    FROM a JOIN kind_source s USING (kind)
    CROSS JOIN LATERAL (
      -- v jsonb := <alias>->'x'->'y'
      SELECT ARRAY[v[1], v[2], v[3], ''] FROM regexp_matches(s.src, '(\w+)\s+(?:jsonb\s+)?:=\s*(\w+)((?:->''[^'']+'')+)\s*;', 'g') v
       WHERE v[2] = a.alias
      UNION ALL
      -- jsonb_array_elements(<alias>->'x') e, also coalesce(..., '[]')
      SELECT ARRAY[e[3], e[1], e[2], '[]'] FROM regexp_matches(s.src, 'jsonb_array_elements\((?:coalesce\()?(\w+)((?:->''[^'']+'')*)(?:, ''\[\]''\))?\) (\w+)', 'g') e
       WHERE e[1] = a.alias
    ) m(v)
   WHERE m.v[1] <> a.alias
)
SELECT * FROM a;

-- The fields each kind's function reads.
CREATE TEMP TABLE kind_reads AS
SELECT DISTINCT s.kind, s.apply_function,
       a.path || CASE WHEN a.path = '' THEN '' ELSE '.' END
              || array_to_string(ARRAY(SELECT x[1] FROM regexp_matches(r[1], '''([^'']+)''', 'g') x), '.') AS field
  FROM kind_source s JOIN kind_alias a USING (kind)
 CROSS JOIN LATERAL regexp_matches(s.src, '\m' || a.alias || '((?:->>?''[^'']+'')+)', 'g') r
UNION
-- stripe_billing._user_ref(<alias>->'metadata'): the keys it reads
SELECT DISTINCT s.kind, s.apply_function,
       a.path || CASE WHEN a.path = '' THEN '' ELSE '.' END
              || array_to_string(ARRAY(SELECT x[1] FROM regexp_matches(u[1], '''([^'']+)''', 'g') x), '.')
              || '.' || k[1]
  FROM kind_source s JOIN kind_alias a USING (kind)
 CROSS JOIN LATERAL regexp_matches(s.src, 'stripe_billing\._user_ref\(' || a.alias || '((?:->''[^'']+'')+)\)', 'g') u
 CROSS JOIN LATERAL regexp_matches((SELECT prosrc FROM pg_proc WHERE oid = 'stripe_billing._user_ref(jsonb)'::regprocedure),
                                   'OPERATOR\(pg_catalog\.->>\) ''([^'']+)''', 'g') k;

-- Objects applied again as another kind (_apply_x(<alias> || jsonb_build_object('object', 'K'), ...)):
-- what K's function reads, under the alias's path.
INSERT INTO kind_reads
SELECT s.kind, s.apply_function, a.path || '.' || inner_reads.field
  FROM kind_source s JOIN kind_alias a USING (kind)
 CROSS JOIN LATERAL regexp_matches(s.src, 'stripe_billing\._apply_\w+\(' || a.alias || ' \|\| jsonb_build_object\(''object'', ''([a-z_.]+)''\)', 'g') m
  JOIN kind_reads inner_reads ON inner_reads.kind = m[1]
 WHERE inner_reads.field <> 'object';

-- Every kind reads fields (the extraction above finds them).
SELECT kind, count(*) > 2 AS reads_found FROM kind_reads GROUP BY kind ORDER BY kind;

-- Fields read but not validated by the kind's shape check: none.  (The
-- object's own "object" is the kind, which the ledger reads first.)
SELECT r.kind, r.apply_function, r.field AS unvalidated_field
  FROM kind_reads r JOIN kind_source s USING (kind)
 WHERE r.field <> 'object' AND r.field <> ALL (s.fields)
 ORDER BY 1, 2, 3;

-- Accesses to the object the extraction cannot read (#>, a key that is not
-- a literal, jsonb_extract_path, ...): none.
SELECT s.kind, s.apply_function, m[1] AS unreadable_access
  FROM kind_source s JOIN kind_alias a USING (kind)
 CROSS JOIN LATERAL regexp_matches(s.src, '(\m' || a.alias || '\s*(?:#>>?|->>?(?![>'']))[^\n]{0,20})', 'g') m
UNION ALL
SELECT s.kind, s.apply_function, m[1]
  FROM kind_source s CROSS JOIN LATERAL regexp_matches(s.src, '(jsonb_extract_path\w*\([^\n]{0,30})', 'g') m
 ORDER BY 1, 2, 3;

-- The event types announced to the application when recorded (notices:
-- events without a row), each one of its kind's event types.
SELECT kind, notice_event_types,
       (SELECT bool_and(EXISTS (SELECT FROM unnest(event_types) t
                                 WHERE n = t OR (t LIKE '%.' AND starts_with(n, t))))
          FROM unnest(notice_event_types) n) AS of_its_event_types
  FROM _object_kinds() WHERE notice_event_types <> '{}' ORDER BY kind;

-- Every function that applies an object (o jsonb, ...) is some kind's.
SELECT p.proname AS apply_function_without_kind
  FROM pg_proc p
 WHERE p.pronamespace = 'stripe_billing'::regnamespace AND p.proname LIKE '\_apply\_%'
   AND p.proargnames[1] = 'o'
   AND p.proname NOT IN (SELECT apply_function FROM _object_kinds());

DROP EXTENSION stripe_billing;
