/**
 * large-objects — large objects, which logical replication does not carry:
 * copied in the load, brought in line again by each sync pass, and once more
 * inside the cutover's fence.
 *
 * Input: a source session (inside the load's snapshot, or a plain one: then
 * each pass reads in its own REPEATABLE READ transaction), a target session,
 * the migration id. Output: every source large object on the target under the
 * same OID, with its owner (through `roleMap`), grants and comment; and per
 * object a row in `pgferry.large_objects` (size and content digest), committed
 * in the same target transaction as the object's data.
 *
 * On both servers only the lo_* functions and pg_largeobject_metadata are
 * used, never the catalog pg_largeobject (non-superusers cannot read it on
 * managed servers). Memory stays bounded: data moves `LO_CHUNK_BYTES` at a
 * time, and objects are handled `PAGE_OBJECTS` at a time.
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { qi, ql } from './conn';
import { PgferryError, asPgferryError, sqlState } from './errors';

/**
 * Bytes per lo_get/lo_put round trip, and the piece size of the content
 * digest (see `digestSql`). Fixed: the digests kept in
 * `pgferry.large_objects` depend on it.
 */
export const LO_CHUNK_BYTES = 1024 * 1024;
/** Objects read and compared per query. */
const PAGE_OBJECTS = 100;
/** A target transaction commits once it has written this many bytes (and at the end of each page). */
const COMMIT_BYTES = 64 * 1024 * 1024;
/** INV_READ: a read-only descriptor, which reads as of the transaction's snapshot. */
const INV_READ = 0x40000;

/** pgferry's record of the large objects it wrote on the target (kept in this file, not in target-state.ts). */
export const LARGE_OBJECT_STATE_DDL = `
CREATE SCHEMA IF NOT EXISTS pgferry;
CREATE TABLE IF NOT EXISTS pgferry.large_objects (
  migration_id text NOT NULL,
  oid oid NOT NULL,
  md5 text NOT NULL,
  size bigint NOT NULL,
  copied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (migration_id, oid)
);`;

export interface LargeObjectOptions {
  /** Whose objects these are in `pgferry.large_objects`. */
  migrationId: string;
  /** Stops the pass between chunks; what was committed stays and a rerun resumes from it. */
  signal?: AbortSignal;
  /** Called as objects are handled: how many so far, bytes written so far. */
  onProgress?: (done: number, bytes: number) => void;
  /** Source role name → target role name, for owners and grantees. Unmapped roles keep their name. */
  roleMap?: Record<string, string>;
}

export interface LargeObjectStats {
  /** Large objects on the source. */
  objects: number;
  /** Written on the target for the first time (or again, after someone unlinked them there). */
  created: number;
  /** Written again: their size or content digest changed on the source. */
  updated: number;
  /** Data already equal on the target (copied by an earlier run or pass). */
  unchanged: number;
  /** Unlinked on the target: pgferry had copied them and they are gone from the source. */
  unlinked: number;
  /** Objects whose owner, grants or comment had to be changed on the target. */
  metadataChanged: number;
  /** Bytes written to the target. */
  bytes: number;
  elapsedMs: number;
}

/** What one sync pass did; the same counts as the load's. */
export type LargeObjectSyncStats = LargeObjectStats;

interface AclEntry {
  /** null: PUBLIC. */
  grantee: string | null;
  privilege: string;
  grantable: boolean;
}

interface LoMeta {
  oid: number;
  owner: string;
  /** Effective grants (the default ones when the ACL is NULL); the grantor is not kept. */
  acl: AclEntry[];
  comment: string | null;
}

interface Content {
  size: number;
  md5: string;
}

/** Create pgferry's large-object bookkeeping table on the target if it is missing. */
export async function ensureLargeObjectState(target: pg.Client): Promise<void> {
  await target.query("SELECT pg_advisory_lock(hashtext('pgferry.target_state'))");
  try {
    await target.query(LARGE_OBJECT_STATE_DDL);
  } finally {
    await target.query("SELECT pg_advisory_unlock(hashtext('pgferry.target_state'))");
  }
}

/** Forget what `migrationId` recorded about large objects (the objects themselves stay). */
export async function dropLargeObjectState(target: pg.Client, migrationId: string): Promise<void> {
  const r = await target.query("SELECT to_regclass('pgferry.large_objects') IS NOT NULL AS present");
  if (r.rows[0].present) await target.query('DELETE FROM pgferry.large_objects WHERE migration_id = $1', [migrationId]);
}

/**
 * The load's copy of the large objects: every object the source session sees
 * is created on the target under the same OID, data in `LO_CHUNK_BYTES`
 * pieces, then owner, grants and comment. Resumable: objects recorded by an
 * earlier run with the same size and digest are not copied again, and ones
 * recorded with another are replaced. An OID taken on the target by an
 * object pgferry did not write stops the copy and leaves that object alone.
 *
 * @example
 *   await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
 *   await src.query(`SET TRANSACTION SNAPSHOT '${snapshotName}'`);
 *   const stats = await copyLargeObjects(src, tgt, { migrationId, signal });
 */
export async function copyLargeObjects(source: pg.Client, target: pg.Client, opts: LargeObjectOptions): Promise<LargeObjectStats> {
  return reconcile(source, target, opts, 'copying large objects');
}

/**
 * Bring the target's large objects in line with the source's current state:
 * new objects created, changed ones (size or content digest) written again,
 * ones pgferry copied and the source no longer has unlinked, owner, grants and
 * comments applied. Each pass reads every object once on the source server
 * (digests are computed there, 32 bytes per object cross the network); a pass
 * that finds nothing changed writes nothing.
 */
export async function syncLargeObjects(source: pg.Client, target: pg.Client, opts: LargeObjectOptions): Promise<LargeObjectSyncStats> {
  return reconcile(source, target, opts, 'syncing large objects');
}

async function reconcile(source: pg.Client, target: pg.Client, opts: LargeObjectOptions, what: string): Promise<LargeObjectStats> {
  const started = Date.now();
  const stats: LargeObjectStats = { objects: 0, created: 0, updated: 0, unchanged: 0, unlinked: 0, metadataChanged: 0, bytes: 0, elapsedMs: 0 };
  if (target.getTransactionStatus() !== 'I') {
    throw new PgferryError('INTERNAL', `${what}: the target session is inside a transaction.`, 'Pass a target session with no open transaction.');
  }
  // One pass per migration at a time (a periodic pass and the cutover's must not interleave).
  const lockKey = `pgferry.large_objects ${opts.migrationId}`;
  try {
    await ensureLargeObjectState(target);
    await target.query('SELECT pg_advisory_lock(hashtext($1))', [lockKey]);
    await withReadView(source, async () => {
      const roles = new RoleCheck(target, opts.roleMap ?? {});
      for (let after = 0; ;) {
        const page = await readMetadata(source, { after });
        if (!page.length) break;
        await reconcilePage(source, target, page, roles, opts, stats);
        after = page[page.length - 1].oid;
        stats.objects += page.length;
      }
      await unlinkGone(source, target, opts, stats);
    });
  } catch (e) {
    if (target.getTransactionStatus() !== 'I') await target.query('ROLLBACK').catch(() => undefined);
    throw asPgferryError(e, 'COPY_FAILED', what);
  } finally {
    await target.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey]).catch(() => undefined);
  }
  stats.elapsedMs = Date.now() - started;
  return stats;
}

/** One page of source objects: check, write what differs, apply metadata; committed at the end. */
async function reconcilePage(source: pg.Client, target: pg.Client, page: LoMeta[], roles: RoleCheck, opts: LargeObjectOptions, stats: LargeObjectStats) {
  const oids = page.map((m) => m.oid);
  const onTarget = new Set((await readMetadata(target, { oids })).map((m) => m.oid));
  const recorded = await readRecorded(target, opts.migrationId, oids);
  const clashes = oids.filter((o) => onTarget.has(o) && !recorded.has(o));
  if (clashes.length) throw clashError(clashes);
  for (const m of page) await roles.check(m);

  // Objects pgferry wrote before: compare size, then content digest, on the source server.
  const known = oids.filter((o) => onTarget.has(o));
  const sizes = await readSizes(source, known);
  const sameSize = known.filter((o) => sizes.get(o) === recorded.get(o)!.size);
  const digests = await readDigests(source, sameSize, sizes);
  const todo = oids.filter((o) => !onTarget.has(o) || digests.get(o) !== recorded.get(o)!.md5);
  stats.unchanged += oids.length - todo.length;
  let done = stats.objects + oids.length - todo.length;
  opts.onProgress?.(done, stats.bytes);

  await target.query('BEGIN');
  let pending = 0;
  for (const oid of todo) {
    throwIfStopped(opts.signal);
    const content = await writeObject(source, target, oid, onTarget.has(oid), opts.signal);
    await target.query(
      `INSERT INTO pgferry.large_objects (migration_id, oid, md5, size) VALUES ($1, $2, $3, $4)
        ON CONFLICT (migration_id, oid) DO UPDATE SET md5 = excluded.md5, size = excluded.size, copied_at = now()`,
      [opts.migrationId, oid, content.md5, content.size],
    );
    if (onTarget.has(oid)) stats.updated++;
    else stats.created++;
    stats.bytes += content.size;
    opts.onProgress?.(++done, stats.bytes);
    pending += content.size;
    if (pending >= COMMIT_BYTES) {
      await target.query('COMMIT');
      await target.query('BEGIN');
      pending = 0;
    }
  }
  const have = new Map((await readMetadata(target, { oids })).map((m) => [m.oid, m]));
  for (const m of page) {
    if (await applyMetadata(target, m, have.get(m.oid)!, opts.roleMap ?? {})) stats.metadataChanged++;
  }
  await target.query('COMMIT');
}

/** Unlink on the target the objects pgferry copied that the source no longer has. */
async function unlinkGone(source: pg.Client, target: pg.Client, opts: LargeObjectOptions, stats: LargeObjectStats): Promise<void> {
  for (let after = 0; ;) {
    const r = await target.query('SELECT oid::int8 AS oid FROM pgferry.large_objects WHERE migration_id = $1 AND oid > $2::oid ORDER BY oid LIMIT $3', [
      opts.migrationId,
      after,
      PAGE_OBJECTS,
    ]);
    if (!r.rows.length) return;
    const oids = r.rows.map((row) => Number(row.oid));
    after = oids[oids.length - 1];
    const g = await source.query(
      `SELECT u.o::int8 AS oid FROM unnest($1::oid[]) AS u(o)
        WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = u.o)`,
      [oids],
    );
    const gone = g.rows.map((row) => Number(row.oid));
    if (!gone.length) continue;
    throwIfStopped(opts.signal);
    await target.query('BEGIN');
    await target.query('SELECT lo_unlink(m.oid) FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = ANY($1::oid[])', [gone]);
    await target.query('DELETE FROM pgferry.large_objects WHERE migration_id = $1 AND oid = ANY($2::oid[])', [opts.migrationId, gone]);
    await target.query('COMMIT');
    stats.unlinked += gone.length;
  }
}

/**
 * Write one object on the target (inside the caller's transaction), reading
 * it from the source a chunk at a time; the next chunk is read while the
 * previous one is written, so at most two chunks are in memory.
 */
async function writeObject(source: pg.Client, target: pg.Client, oid: number, replace: boolean, signal?: AbortSignal): Promise<Content> {
  // The old copy goes with its comment and grants; both are applied again after.
  if (replace) await target.query('SELECT lo_unlink($1::oid)', [oid]);
  await target.query('SELECT lo_create($1::oid)', [oid]);
  const digest = new ContentDigest();
  const read = (offset: number) => {
    const p = readQuery(source, `SELECT lo_get($1::oid, $2::int8, ${LO_CHUNK_BYTES}) AS data`, [oid, offset]).then((r) => r.rows[0].data as Buffer);
    p.catch(() => undefined); // awaited below; a write failing first must not leave it unhandled
    return p;
  };
  let offset = 0;
  let next = read(0);
  for (;;) {
    const chunk = await next;
    if (chunk.length === 0) break;
    throwIfStopped(signal);
    const last = chunk.length < LO_CHUNK_BYTES;
    if (!last) next = read(offset + chunk.length);
    digest.add(chunk);
    await target.query('SELECT lo_put($1::oid, $2::int8, $3::bytea)', [oid, offset, chunk]);
    offset += chunk.length;
    if (last) break;
  }
  return { size: offset, md5: digest.hex() };
}

/** Owner, grants and comment of one target object made the source's; true when something changed. */
async function applyMetadata(target: pg.Client, want: LoMeta, have: LoMeta, roleMap: Record<string, string>): Promise<boolean> {
  const owner = mapRole(want.owner, roleMap);
  let changed = false;
  if (have.owner !== owner) {
    await target.query(`ALTER LARGE OBJECT ${want.oid} OWNER TO ${qi(owner)}`).catch((e) => {
      if (sqlState(e) !== '42501') throw e;
      throw new PgferryError(
        'INSUFFICIENT_PRIVILEGE',
        `The target user may not make role "${owner}" the owner of large object ${want.oid}: ${(e as Error).message}.`,
        `On the target, GRANT ${qi(owner)} TO the target user (or use a superuser), or map the owner to another role with \`roleMap\`.`,
        { cause: e },
      );
    });
    // ALTER … OWNER moves the old owner's grants to the new one: read them again.
    have = (await readMetadata(target, { oids: [want.oid] }))[0];
    changed = true;
  }
  const wantAcl = mapAcl(want.acl, roleMap);
  if (aclKey(wantAcl) !== aclKey(have.acl)) {
    const from = [...new Set(have.acl.map((a) => granteeSql(a.grantee)))];
    await target.query(`REVOKE ALL ON LARGE OBJECT ${want.oid} FROM ${from.join(', ')} CASCADE`);
    for (const a of wantAcl) {
      await target.query(`GRANT ${a.privilege} ON LARGE OBJECT ${want.oid} TO ${granteeSql(a.grantee)}${a.grantable ? ' WITH GRANT OPTION' : ''}`);
    }
    changed = true;
  }
  if (have.comment !== want.comment) {
    await target.query(`COMMENT ON LARGE OBJECT ${want.oid} IS ${want.comment === null ? 'NULL' : ql(want.comment)}`);
    changed = true;
  }
  return changed;
}

/** Roles named by the source objects exist on the target (after `roleMap`); checked once per role. */
class RoleCheck {
  private known = new Set<string>();
  constructor(
    private target: pg.Client,
    private roleMap: Record<string, string>,
  ) {}
  async check(m: LoMeta): Promise<void> {
    const names = [m.owner, ...m.acl.map((a) => a.grantee)].filter((n): n is string => n !== null);
    for (const name of names) {
      const role = mapRole(name, this.roleMap);
      if (this.known.has(role)) continue;
      const r = await this.target.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [role]);
      if (!r.rows.length) {
        const mapped = role === name ? '' : ` (\`roleMap\` maps source role "${name}" to it)`;
        throw new PgferryError(
          'COPY_FAILED',
          `Large object ${m.oid} is owned by or granted to role "${role}"${mapped}, which does not exist on the target.`,
          `Create the role on the target (CREATE ROLE ${qi(role)}), or map "${name}" to an existing target role with \`roleMap\`.`,
        );
      }
      this.known.add(role);
    }
  }
}

function clashError(oids: number[]): PgferryError {
  const list = oids.slice(0, 10).join(', ') + (oids.length > 10 ? `, … (${oids.length} in all)` : '');
  return new PgferryError(
    'COPY_FAILED',
    `Large object OID ${list} is already used on the target by an object pgferry did not copy; pgferry will not overwrite it.`,
    `If that target object is not needed, remove it (SELECT lo_unlink(${oids[0]}); on the target) and start the migration again; otherwise move it to another OID first (SELECT lo_from_bytea(0, lo_get(${oids[0]}));, then lo_unlink(${oids[0]})).`,
  );
}

function throwIfStopped(signal?: AbortSignal): void {
  if (signal?.aborted) throw new PgferryError('INTERNAL', 'The large-object copy was stopped.', '');
}

function mapRole(name: string, roleMap: Record<string, string>): string {
  return Object.prototype.hasOwnProperty.call(roleMap, name) ? roleMap[name] : name;
}

function mapAcl(acl: AclEntry[], roleMap: Record<string, string>): AclEntry[] {
  return acl.map((a) => ({ ...a, grantee: a.grantee === null ? null : mapRole(a.grantee, roleMap) }));
}

function aclKey(acl: AclEntry[]): string {
  return JSON.stringify(acl.map((a) => [a.grantee, a.privilege, a.grantable]).sort());
}

function granteeSql(grantee: string | null): string {
  return grantee === null ? 'PUBLIC' : qi(grantee);
}

/**
 * The content digest, client side: md5 over the hex md5s of the object's
 * `LO_CHUNK_BYTES` pieces in order (md5('') for an empty object). Equal to
 * what `digestSql` computes on a server.
 */
class ContentDigest {
  private outer = createHash('md5');
  add(chunk: Buffer): void {
    this.outer.update(createHash('md5').update(chunk).digest('hex'));
  }
  hex(): string {
    return this.outer.digest('hex');
  }
}

/**
 * The content digest, server side, for objects $1 of sizes $2: each piece is
 * read by lo_get and hashed where it lies; only 32 hex characters per piece
 * stay in the aggregate and one digest per object comes back.
 */
const digestSql = `
SELECT u.o::int8 AS oid, md5(coalesce(string_agg(md5(lo_get(u.o, g.off, ${LO_CHUNK_BYTES})), '' ORDER BY g.off), '')) AS md5
  FROM unnest($1::oid[], $2::int8[]) AS u(o, size)
  LEFT JOIN LATERAL generate_series(0::int8, u.size - 1, ${LO_CHUNK_BYTES}::int8) AS g(off) ON true
 GROUP BY u.o`;

async function readDigests(c: pg.Client, oids: number[], sizes: Map<number, number>): Promise<Map<number, string>> {
  if (!oids.length) return new Map();
  const r = await readQuery(c, digestSql, [oids, oids.map((o) => sizes.get(o))]);
  return new Map(r.rows.map((row) => [Number(row.oid), row.md5 as string]));
}

/**
 * Object sizes without reading their data: lo_open (read-only, so as of the
 * transaction's snapshot), seek to the end, close. The OFFSET 0 fences keep
 * the three calls in that order for each row.
 */
async function readSizes(c: pg.Client, oids: number[]): Promise<Map<number, number>> {
  if (!oids.length) return new Map();
  const r = await readQuery(
    c,
    `SELECT o::int8 AS oid, size::int8 AS size, lo_close(fd) FROM (
       SELECT o, fd, lo_lseek64(fd, 0, 2) AS size FROM (
         SELECT o, lo_open(o, ${INV_READ}) AS fd FROM unnest($1::oid[]) AS u(o) OFFSET 0) a OFFSET 0) b`,
    [oids],
  );
  return new Map(r.rows.map((row) => [Number(row.oid), Number(row.size)]));
}

/** A query reading large objects; a missing SELECT privilege on one becomes an error saying how to grant it. */
async function readQuery(c: pg.Client, sql: string, params: unknown[]): Promise<pg.QueryResult> {
  try {
    return await c.query(sql, params);
  } catch (e) {
    if (sqlState(e) !== '42501') throw e;
    throw new PgferryError(
      'INSUFFICIENT_PRIVILEGE',
      `Reading large objects was refused: ${(e as Error).message}.`,
      'Grant the migration user SELECT on every large object (GRANT SELECT ON LARGE OBJECT <oid> TO <user>), make it their owner, or use a superuser.',
      { cause: e },
    );
  }
}

/** Metadata of the objects after OID `after` (a page, in OID order), or of the objects `oids`. */
async function readMetadata(c: pg.Client, where: { after: number } | { oids: number[] }): Promise<LoMeta[]> {
  const cond = 'after' in where ? 'm.oid > $1::oid ORDER BY m.oid LIMIT $2' : 'm.oid = ANY($1::oid[]) ORDER BY m.oid';
  const params: unknown[] = 'after' in where ? [where.after, PAGE_OBJECTS] : [where.oids];
  const r = await c.query(
    `SELECT m.oid::int8 AS oid, pg_catalog.pg_get_userbyid(m.lomowner) AS owner,
            pg_catalog.obj_description(m.oid, 'pg_largeobject') AS comment,
            (SELECT coalesce(json_agg(json_build_array(CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                                                       a.privilege_type, a.is_grantable)), '[]')
               FROM pg_catalog.aclexplode(coalesce(m.lomacl, pg_catalog.acldefault('L', m.lomowner))) a) AS acl
       FROM pg_catalog.pg_largeobject_metadata m WHERE ${cond}`,
    params,
  );
  return r.rows.map((row) => ({
    oid: Number(row.oid),
    owner: row.owner as string,
    comment: (row.comment as string | null) ?? null,
    acl: (row.acl as Array<[string | null, string, boolean]>).map(([grantee, privilege, grantable]) => ({ grantee, privilege, grantable })),
  }));
}

async function readRecorded(target: pg.Client, migrationId: string, oids: number[]): Promise<Map<number, Content>> {
  const r = await target.query('SELECT oid::int8 AS oid, md5, size FROM pgferry.large_objects WHERE migration_id = $1 AND oid = ANY($2::oid[])', [
    migrationId,
    oids,
  ]);
  return new Map(r.rows.map((row) => [Number(row.oid), { md5: row.md5 as string, size: Number(row.size) }]));
}

/**
 * Run `fn` in one consistent view of `c`: inside the transaction the session
 * is already in (the load's snapshot), or else in a REPEATABLE READ READ ONLY
 * transaction opened and ended here.
 */
async function withReadView<T>(c: pg.Client, fn: () => Promise<T>): Promise<T> {
  const status = c.getTransactionStatus();
  if (status === 'T') return fn();
  if (status === 'E') throw new PgferryError('INTERNAL', 'The session given to read large objects is in a failed transaction.', 'Roll it back first.');
  await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const out = await fn();
    await c.query('COMMIT');
    return out;
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/**
 * Whether the target's large objects are the source's: the same OIDs, sizes,
 * content digests, owners (through `roleMap`), grants and comments. Each
 * side is read in one consistent view; every difference is listed.
 */
export async function largeObjectsEqual(
  source: pg.Client,
  target: pg.Client,
  opts: { roleMap?: Record<string, string> } = {},
): Promise<{ equal: boolean; differences: string[] }> {
  const differences: string[] = [];
  const roleMap = opts.roleMap ?? {};
  await withReadView(source, () =>
    withReadView(target, async () => {
      const list = async (c: pg.Client) =>
        (await c.query('SELECT oid::int8 AS oid FROM pg_catalog.pg_largeobject_metadata ORDER BY oid')).rows.map((r) => Number(r.oid));
      const [src, tgt] = [await list(source), await list(target)];
      const tgtSet = new Set(tgt);
      const srcSet = new Set(src);
      for (const o of src) if (!tgtSet.has(o)) differences.push(`large object ${o}: missing on the target`);
      for (const o of tgt) if (!srcSet.has(o)) differences.push(`large object ${o}: only on the target`);
      const both = src.filter((o) => tgtSet.has(o));
      for (let i = 0; i < both.length; i += PAGE_OBJECTS) {
        const oids = both.slice(i, i + PAGE_OBJECTS);
        const [s, t] = [await describeObjects(source, oids), await describeObjects(target, oids)];
        for (const o of oids) differences.push(...compareObject(o, s.get(o)!, t.get(o)!, roleMap));
      }
    }),
  );
  return { equal: differences.length === 0, differences };
}

async function describeObjects(c: pg.Client, oids: number[]): Promise<Map<number, LoMeta & Content>> {
  const sizes = await readSizes(c, oids);
  const digests = await readDigests(c, oids, sizes);
  const meta = await readMetadata(c, { oids });
  return new Map(meta.map((m) => [m.oid, { ...m, size: sizes.get(m.oid)!, md5: digests.get(m.oid)! }]));
}

function compareObject(oid: number, s: LoMeta & Content, t: LoMeta & Content, roleMap: Record<string, string>): string[] {
  const out: string[] = [];
  const diff = (what: string, a: unknown, b: unknown) => {
    if (a !== b) out.push(`large object ${oid}: ${what} ${JSON.stringify(a)} on the source, ${JSON.stringify(b)} on the target`);
  };
  diff('size', s.size, t.size);
  if (s.size === t.size) diff('content digest', s.md5, t.md5);
  diff('owner', mapRole(s.owner, roleMap), t.owner);
  diff('grants', aclKey(mapAcl(s.acl, roleMap)), aclKey(t.acl));
  diff('comment', s.comment, t.comment);
  return out;
}
