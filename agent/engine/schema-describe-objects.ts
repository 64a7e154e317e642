/**
 * schema-describe-objects — the schema verification's reads of the objects
 * that belong to a schema rather than to a table: schemas, extensions,
 * functions, procedures, aggregates, operators, casts, types, domains,
 * collations, text search dictionaries and configurations, and default
 * privileges; and the SQL fragments every read shares (extension members,
 * normalized ACLs).
 *
 * Input: a connection already under `withCanonicalSettings` (so every
 * deparser qualifies names) and the schemas to describe.
 * Output: one `DescribedRow` per object; schema-describe.ts turns them into
 * `SchemaObject`s. Queries work on servers 12–17; columns that do not exist
 * on every version are read through `to_jsonb(row)`.
 */
import type pg from 'pg';

/** One privilege of a normalized ACL, as the SQL below returns it (`g`: grantee, null for PUBLIC). */
export interface AclRow {
  g: string | null;
  p: string;
  o: boolean;
  r: boolean;
}

/** An object as a read returns it, before the ACL and the definition are normalized. */
export interface DescribedRow {
  kind: string;
  identity: string;
  definition: string | null;
  owner?: string | null;
  acl?: AclRow[] | null;
  enabled?: string | null;
  comment?: string | null;
  /** Policies: the roles they apply to (null for PUBLIC). */
  roles?: Array<string | null> | null;
  /** Default privileges: the role whose future objects get them. */
  role?: string | null;
  /** Views and materialized views: `pg_get_viewdef`, normalized apart from the rest of the definition. */
  viewdef?: string | null;
  /** Default privileges: their schema, null when database-wide. */
  schema?: string | null;
  objtype?: string | null;
}

/** No member of an extension (the extension is compared, not what it brings). */
export const notExtensionMember = (catalog: string, oid: string): string =>
  `NOT EXISTS (SELECT 1 FROM pg_depend xd WHERE xd.classid = '${catalog}'::regclass AND xd.objid = ${oid} AND xd.deptype = 'e')`;

/**
 * An ACL as the privileges that differ from `base` (the object's default,
 * `acldefault`): granted beyond it (r = false) and revoked from it
 * (r = true), grantors dropped. Relative to the default because the
 * default itself differs across versions (17 gives owners MAINTAIN), and
 * because an ACL that was never touched is NULL on one side and spelled out
 * on the other after a GRANT and REVOKE. Not normalized: `GRANT ALL`
 * typed on 17 includes MAINTAIN, which 16 and older do not have (a target
 * given the source's own privileges compares equal).
 */
export const aclJson = (acl: string, base: string): string => `(
  SELECT coalesce(jsonb_agg(jsonb_build_object('g', CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
                                               'p', x.privilege_type, 'o', x.is_grantable, 'r', x.revoked)), '[]'::jsonb)
    FROM ((SELECT grantee, privilege_type, is_grantable, false AS revoked FROM aclexplode(coalesce(${acl}, ${base}))
           EXCEPT SELECT grantee, privilege_type, is_grantable, false FROM aclexplode(${base}))
          UNION ALL
          (SELECT grantee, privilege_type, is_grantable, true FROM aclexplode(${base})
           EXCEPT SELECT grantee, privilege_type, is_grantable, true FROM aclexplode(coalesce(${acl}, ${base})))) x)`;

const inSchemas = (nsp: string) => `${nsp}.nspname = ANY($1::text[])`;

async function rows(c: pg.Client, sql: string, params: unknown[]): Promise<DescribedRow[]> {
  return (await c.query<DescribedRow>(sql, params)).rows;
}

/**
 * Schemas and the extensions installed in them. The schema `public` of a
 * database created by 15+ is owned by pg_database_owner and grants no
 * CREATE to PUBLIC; from a 13 or 14 source both show as differences, on
 * purpose: they change who may create objects there.
 */
export async function readSchemasAndExtensions(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  const own = await rows(
    c,
    `SELECT 'schema' AS kind, 'schema ' || quote_ident(n.nspname) AS identity, '' AS definition,
            pg_get_userbyid(n.nspowner) AS owner, ${aclJson('n.nspacl', `acldefault('n', n.nspowner)`)} AS acl,
            obj_description(n.oid, 'pg_namespace') AS comment
       FROM pg_namespace n WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_namespace', 'n.oid')}`,
    [schemas],
  );
  // An extension is compared by name, schema and version: a target whose
  // packages ship another default version shows it here (accept it, or
  // ALTER EXTENSION … UPDATE).
  const ext = await rows(
    c,
    `SELECT 'extension' AS kind, 'extension ' || quote_ident(e.extname) AS identity,
            'SCHEMA ' || quote_ident(n.nspname) || ' VERSION ' || quote_literal(e.extversion) AS definition,
            pg_get_userbyid(e.extowner) AS owner, obj_description(e.oid, 'pg_extension') AS comment
       FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE ${inSchemas('n')}`,
    [schemas],
  );
  return [...own, ...ext];
}

/**
 * Functions and procedures by `pg_get_functiondef`; aggregates from
 * pg_aggregate (the deparser refuses them). Functions a type made for
 * itself (range constructors: an internal dependency) are left out.
 */
export async function readRoutines(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  const fn = (label: string, col: string) => `'${label} = ' || nullif(a.${col}::oid, 0)::regprocedure::text`;
  return rows(
    c,
    `SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END AS kind,
            CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function ' END || p.oid::regprocedure::text AS identity,
            CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) ELSE concat_ws(', ',
              '(' || pg_get_function_arguments(p.oid) || ')', 'RETURNS ' || pg_get_function_result(p.oid),
              'SFUNC = ' || a.aggtransfn::oid::regprocedure::text, 'STYPE = ' || format_type(a.aggtranstype, NULL),
              'SSPACE = ' || nullif(a.aggtransspace, 0), ${fn('FINALFUNC', 'aggfinalfn')}, CASE WHEN a.aggfinalextra THEN 'FINALFUNC_EXTRA' END,
              'FINALFUNC_MODIFY = ' || a.aggfinalmodify::text, ${fn('COMBINEFUNC', 'aggcombinefn')}, ${fn('SERIALFUNC', 'aggserialfn')}, ${fn('DESERIALFUNC', 'aggdeserialfn')},
              'INITCOND = ' || quote_literal(a.agginitval), ${fn('MSFUNC', 'aggmtransfn')}, ${fn('MINVFUNC', 'aggminvtransfn')},
              'MSTYPE = ' || format_type(nullif(a.aggmtranstype, 0), NULL), 'MSSPACE = ' || nullif(a.aggmtransspace, 0),
              ${fn('MFINALFUNC', 'aggmfinalfn')}, CASE WHEN a.aggmfinalextra THEN 'MFINALFUNC_EXTRA' END, 'MFINALFUNC_MODIFY = ' || a.aggmfinalmodify::text,
              'MINITCOND = ' || quote_literal(a.aggminitval), 'SORTOP = ' || nullif(a.aggsortop, 0)::regoperator::text,
              'KIND = ' || a.aggkind::text, 'DIRECTARGS = ' || nullif(a.aggnumdirectargs, 0), 'PARALLEL = ' || p.proparallel::text) END AS definition,
            pg_get_userbyid(p.proowner) AS owner, ${aclJson('p.proacl', `acldefault('f', p.proowner)`)} AS acl,
            obj_description(p.oid, 'pg_proc') AS comment
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_proc', 'p.oid')}
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')`,
    [schemas],
  ).then((r) => r.map((row) => ({ ...row, definition: row.definition?.replace(/\s+$/, '') ?? null })));
}

/** Operators, and the casts that involve a type or a function of the schemas. */
export async function readOperatorsAndCasts(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  const ops = await rows(
    c,
    `SELECT 'operator' AS kind, 'operator ' || o.oid::regoperator::text AS identity,
            concat_ws(', ', 'FUNCTION = ' || o.oprcode::oid::regprocedure::text, 'LEFTARG = ' || format_type(nullif(o.oprleft, 0), NULL),
              'RIGHTARG = ' || format_type(nullif(o.oprright, 0), NULL), 'COMMUTATOR = ' || nullif(o.oprcom, 0)::regoperator::text,
              'NEGATOR = ' || nullif(o.oprnegate, 0)::regoperator::text, 'RESTRICT = ' || nullif(o.oprrest::oid, 0)::regprocedure::text,
              'JOIN = ' || nullif(o.oprjoin::oid, 0)::regprocedure::text, CASE WHEN o.oprcanhash THEN 'HASHES' END,
              CASE WHEN o.oprcanmerge THEN 'MERGES' END) AS definition,
            pg_get_userbyid(o.oprowner) AS owner, obj_description(o.oid, 'pg_operator') AS comment
       FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_operator', 'o.oid')}`,
    [schemas],
  );
  const casts = await rows(
    c,
    `SELECT 'cast' AS kind, format('cast (%s AS %s)', format_type(k.castsource, NULL), format_type(k.casttarget, NULL)) AS identity,
            concat_ws(' ', CASE k.castmethod WHEN 'f' THEN 'WITH FUNCTION ' || k.castfunc::regprocedure::text
                                             WHEN 'i' THEN 'WITH INOUT' ELSE 'WITHOUT FUNCTION' END,
                      CASE k.castcontext WHEN 'a' THEN 'AS ASSIGNMENT' WHEN 'i' THEN 'AS IMPLICIT' END) AS definition,
            obj_description(k.oid, 'pg_cast') AS comment
       FROM pg_cast k
      WHERE k.oid >= 16384 AND ${notExtensionMember('pg_cast', 'k.oid')}
        -- not a cast a type made for itself (14+: range to multirange)
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_cast'::regclass AND d.objid = k.oid AND d.deptype = 'i')
        AND (EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                      WHERE t.oid IN (k.castsource, k.casttarget) AND ${inSchemas('n')})
             OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = k.castfunc AND ${inSchemas('n')}))`,
    [schemas],
  );
  return [...ops, ...casts];
}

/**
 * Enums, domains, composite, range and base types. Left out: array types
 * and table row types (they come with their element or table), and
 * multirange types (14+ makes one for every range; a 13 source has none).
 */
export async function readTypes(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  const qualified = (nsp: string, name: string) => `(SELECT format('%I.%I', nspname, ${name}) FROM pg_namespace WHERE oid = ${nsp})`;
  return rows(
    c,
    `SELECT CASE WHEN t.typtype = 'd' THEN 'domain' ELSE 'type' END AS kind,
            CASE WHEN t.typtype = 'd' THEN 'domain ' ELSE 'type ' END || t.oid::regtype::text AS identity,
            CASE t.typtype
              WHEN 'e' THEN 'ENUM (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                           FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
              WHEN 'd' THEN concat_ws(' ', 'AS ' || format_type(t.typbasetype, t.typtypmod),
                  CASE WHEN t.typcollation <> b.typcollation THEN 'COLLATE ' || ${qualified('co.collnamespace', 'co.collname')} END,
                  'DEFAULT ' || pg_get_expr(t.typdefaultbin, 0), CASE WHEN t.typnotnull THEN 'NOT NULL' END,
                  (SELECT string_agg(format('CONSTRAINT %I %s', k.conname, pg_get_constraintdef(k.oid)), ' ' ORDER BY k.conname)
                     FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype = 'c'))
              WHEN 'c' THEN 'AS (' || (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod))
                                               || CASE WHEN a.attcollation <> at.typcollation
                                                       THEN ' COLLATE ' || ${qualified('ac.collnamespace', 'ac.collname')} ELSE '' END,
                                               ', ' ORDER BY a.attnum)
                                         FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
                                         LEFT JOIN pg_collation ac ON ac.oid = a.attcollation
                                        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) || ')'
              WHEN 'r' THEN (SELECT concat_ws(', ', 'AS RANGE (SUBTYPE = ' || format_type(r.rngsubtype, NULL),
                                    'SUBTYPE_OPCLASS = ' || ${qualified('oc.opcnamespace', 'oc.opcname')},
                                    'COLLATION = ' || ${qualified('rc.collnamespace', 'rc.collname')},
                                    'CANONICAL = ' || nullif(r.rngcanonical::oid, 0)::regprocedure::text,
                                    'SUBTYPE_DIFF = ' || nullif(r.rngsubdiff::oid, 0)::regprocedure::text) || ')'
                               FROM pg_range r JOIN pg_opclass oc ON oc.oid = r.rngsubopc
                               LEFT JOIN pg_collation rc ON rc.oid = r.rngcollation WHERE r.rngtypid = t.oid)
              ELSE concat_ws(', ', 'AS BASE (INPUT = ' || t.typinput::oid::regprocedure::text, 'OUTPUT = ' || t.typoutput::oid::regprocedure::text,
                    'RECEIVE = ' || nullif(t.typreceive::oid, 0)::regprocedure::text, 'SEND = ' || nullif(t.typsend::oid, 0)::regprocedure::text,
                    'TYPMOD_IN = ' || nullif(t.typmodin::oid, 0)::regprocedure::text, 'TYPMOD_OUT = ' || nullif(t.typmodout::oid, 0)::regprocedure::text,
                    'ANALYZE = ' || nullif(t.typanalyze::oid, 0)::regprocedure::text, 'INTERNALLENGTH = ' || t.typlen,
                    CASE WHEN t.typbyval THEN 'PASSEDBYVALUE' END, 'ALIGNMENT = ' || t.typalign::text, 'STORAGE = ' || t.typstorage::text,
                    'CATEGORY = ' || t.typcategory::text, CASE WHEN t.typispreferred THEN 'PREFERRED' END, 'DELIMITER = ' || quote_literal(t.typdelim::text),
                    'ELEMENT = ' || format_type(nullif(t.typelem, 0), NULL)) || ')'
            END AS definition,
            pg_get_userbyid(t.typowner) AS owner, ${aclJson('t.typacl', `acldefault('T', t.typowner)`)} AS acl,
            obj_description(t.oid, 'pg_type') AS comment
       FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
       LEFT JOIN pg_type b ON b.oid = t.typbasetype
       LEFT JOIN pg_collation co ON co.oid = t.typcollation
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_type', 't.oid')} AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
        AND (t.typrelid = 0 OR (SELECT r.relkind FROM pg_class r WHERE r.oid = t.typrelid) = 'c')
        AND NOT (t.typcategory = 'A' AND EXISTS (SELECT 1 FROM pg_type el WHERE el.oid = t.typelem AND el.typarray = t.oid))`,
    [schemas],
  );
}

/**
 * Collations, text search dictionaries and configurations. An ICU locale is
 * read from where each version keeps it (collcollate up to 14,
 * colliculocale in 15–16, colllocale from 17); the collation's version is
 * not compared (it is the library's, not the schema's).
 */
export async function readCollationsAndTextSearch(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  const coll = await rows(
    c,
    `SELECT 'collation' AS kind, format('collation %I.%I', n.nspname, co.collname) AS identity,
            concat_ws(', ', 'PROVIDER = ' || CASE co.collprovider WHEN 'i' THEN 'icu' WHEN 'c' THEN 'libc' WHEN 'b' THEN 'builtin' ELSE 'default' END,
              CASE WHEN co.collprovider = 'c' THEN 'LC_COLLATE = ' || quote_literal(co.collcollate) END,
              CASE WHEN co.collprovider = 'c' THEN 'LC_CTYPE = ' || quote_literal(co.collctype) END,
              CASE WHEN co.collprovider <> 'c' THEN 'LOCALE = ' || quote_literal(coalesce(j.j ->> 'colllocale', j.j ->> 'colliculocale', co.collcollate)) END,
              'RULES = ' || quote_literal(j.j ->> 'collicurules'), CASE WHEN NOT co.collisdeterministic THEN 'DETERMINISTIC = false' END) AS definition,
            pg_get_userbyid(co.collowner) AS owner, obj_description(co.oid, 'pg_collation') AS comment
       FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace CROSS JOIN LATERAL (SELECT to_jsonb(co) AS j) j
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_collation', 'co.oid')}`,
    [schemas],
  );
  const dicts = await rows(
    c,
    `SELECT 'text-search-dictionary' AS kind, format('text search dictionary %I.%I', n.nspname, d.dictname) AS identity,
            format('TEMPLATE = %I.%I', tn.nspname, tt.tmplname) || coalesce(', ' || d.dictinitoption, '') AS definition,
            pg_get_userbyid(d.dictowner) AS owner, obj_description(d.oid, 'pg_ts_dict') AS comment
       FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace
       JOIN pg_ts_template tt ON tt.oid = d.dicttemplate JOIN pg_namespace tn ON tn.oid = tt.tmplnamespace
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_ts_dict', 'd.oid')}`,
    [schemas],
  );
  const configs = await rows(
    c,
    `SELECT 'text-search-config' AS kind, format('text search configuration %I.%I', n.nspname, cf.cfgname) AS identity,
            format('PARSER = %I.%I', pn.nspname, pr.prsname)
              || coalesce('; ' || (SELECT string_agg(tt.alias || ': ' || m.dicts, '; ' ORDER BY tt.alias)
                                     FROM (SELECT maptokentype, string_agg(mapdict::regdictionary::text, ', ' ORDER BY mapseqno) AS dicts
                                             FROM pg_ts_config_map WHERE mapcfg = cf.oid GROUP BY maptokentype) m
                                     JOIN ts_token_type(cf.cfgparser) tt ON tt.tokid = m.maptokentype), '') AS definition,
            pg_get_userbyid(cf.cfgowner) AS owner, obj_description(cf.oid, 'pg_ts_config') AS comment
       FROM pg_ts_config cf JOIN pg_namespace n ON n.oid = cf.cfgnamespace
       JOIN pg_ts_parser pr ON pr.oid = cf.cfgparser JOIN pg_namespace pn ON pn.oid = pr.prsnamespace
      WHERE ${inSchemas('n')} AND ${notExtensionMember('pg_ts_config', 'cf.oid')}`,
    [schemas],
  );
  return [...coll, ...dicts, ...configs];
}

/**
 * Default privileges in the schemas, and the database-wide ones. A
 * database-wide entry replaces the built-in default, so it is read relative
 * to `acldefault`; a schema's entry adds to it, so it is read as it is.
 */
export async function readDefaultPrivileges(c: pg.Client, schemas: string[]): Promise<DescribedRow[]> {
  return rows(
    c,
    `SELECT 'default-privileges' AS kind, '' AS identity, '' AS definition, pg_get_userbyid(d.defaclrole) AS role, n.nspname AS schema,
            CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types'
                                 WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END AS objtype,
            ${aclJson(
              'd.defaclacl',
              `CASE WHEN d.defaclnamespace = 0
                    THEN acldefault(CASE d.defaclobjtype WHEN 'S' THEN 's' ELSE d.defaclobjtype END, d.defaclrole)
                    ELSE NULL::aclitem[] END`,
            )} AS acl
       FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
      WHERE d.defaclnamespace = 0 OR ${inSchemas('n')}`,
    [schemas],
  );
}
