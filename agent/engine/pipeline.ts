/**
 * pipeline — statements sent to the target without waiting for each
 * other's answers, on a node-postgres client. Part of the **apply** stage:
 * apply.ts sends each batch as one part, behind the batch still executing.
 *
 * Input: parts, each a list of statements (text, parameters, COPY … FROM
 * STDIN data), sent in order; a pipeline may start behind the session's
 * previous one. Output: per part, its statements' answers (row count, first
 * row); or PipelineError naming the statement that failed, and
 * PipelineSkipped for every part sent after it (the server skips everything
 * up to the Sync, later transactions included); a pipeline behind a failed
 * one sends nothing.
 *
 * Protocol (PostgreSQL docs, "Extended Query" and "Pipelining"): per
 * statement Parse (skipped when the named statement is already prepared),
 * Bind, Execute, and for COPY … FROM STDIN its CopyData and CopyDone right
 * behind the Execute; a Flush after each part, so its answers come back
 * without waiting for later parts; one Sync when the pipeline ends (every
 * part sent has been answered, or `end()`).
 *
 * Why batches are pipelined, what that guarantees, and why this is a
 * hand-rolled node-postgres submittable: docs/architecture.md, "The stream:
 * receive → decode → apply" and "Why pgferry speaks the protocols itself".
 */
import type pg from 'pg';

/** A bind parameter: what the apply's statements pass (no JavaScript arrays or objects: they have no one text form). */
export type PipelineValue = Buffer | string | number | null;

export interface PipelineStatement {
  text: string;
  /** Prepared statement name ('' = unnamed, parsed every time). */
  name: string;
  /** Buffers are sent in binary format, strings and numbers as text (null = NULL). */
  values: PipelineValue[];
  /** COPY … FROM STDIN data (text format), sent right behind the statement. */
  copyData?: Buffer;
}

/** What a part's statements answered, one entry each. */
export interface PartResult {
  /** The row count of the command tag (null for statements without one, like BEGIN). */
  counts: (number | null)[];
  /** The first row a statement returned, as text, if it returned any. */
  rows: ((string | null)[] | undefined)[];
}

/** The statement at `index` of its part failed; `cause` is the server's (or the connection's) error. */
export class PipelineError extends Error {
  constructor(
    readonly index: number,
    override readonly cause: unknown,
  ) {
    super((cause as Error)?.message ?? String(cause));
  }
}

/** Nothing of this part ran: a statement sent before it failed. */
export class PipelineSkipped extends Error {
  override readonly cause: unknown;
  constructor(cause: unknown) {
    const root = cause instanceof PipelineSkipped ? cause.cause : cause; // the failure itself, however far behind
    super(`not run: an earlier statement failed (${(root as Error)?.message ?? String(root)})`);
    this.name = 'PipelineSkipped';
    this.cause = root;
  }
}

/** The structural part of node-postgres' Connection that a submittable writes to. */
interface Connection {
  stream: NodeJS.WritableStream & { cork(): void; uncork(): void };
  parse(q: { name: string; text: string }): void;
  bind(c: { statement: string; values: (Buffer | string | null)[] }): void;
  execute(c: Record<string, never>): void;
  endCopyFrom(): void;
  flush(): void;
  sync(): void;
}

interface Part {
  statements: PipelineStatement[];
  /** Names whose Parse this part sends. */
  parses: Set<string>;
  result: PartResult;
  resolve: (r: PartResult) => void;
  reject: (e: unknown) => void;
}

/**
 * One pipeline on `client`. `prepared` holds the names whose Parse the
 * session has sent: a name in it is not parsed again; a Parse that the
 * server skipped or whose statement failed is taken out again.
 */
export class Pipeline {
  private con: Connection | null = null;
  /** Sent (or waiting for the connection), not yet answered, in order. */
  private readonly parts: Part[] = [];
  private syncing = false;
  private done = false;
  private failure: unknown = null;
  private endedResolve!: () => void;
  /** Resolves once the pipeline is over: ended by its Sync, or failed. */
  readonly ended: Promise<void>;

  /**
   * A pipeline behind `behind` (the session's previous one, if any) that
   * starts once `startAfter` has settled (default: once `behind` is over) —
   * the caller's turn on the connection, so node-postgres never has to queue
   * it. If `behind` failed, it sends nothing and its parts are skipped.
   */
  constructor(
    private readonly client: pg.Client,
    private readonly prepared: Set<string>,
    behind: Pipeline | null = null,
    startAfter?: Promise<unknown>,
  ) {
    this.ended = new Promise((resolve) => {
      this.endedResolve = resolve;
    });
    void (startAfter ?? behind?.ended ?? Promise.resolve()).then(
      () => {
        if (behind?.failure) this.finish(new PipelineSkipped(behind.failure));
        else if (this.syncing && this.parts.length === 0)
          this.finish(null); // ended before anything was sent
        else this.submit();
      },
      (e: unknown) => this.finish(e),
    );
  }

  private submit(): void {
    // Arrow functions: node-postgres calls these as the submittable's methods; `this` stays the pipeline.
    this.client.query({
      submit: (connection: Connection): void => {
        this.con = connection;
        const s = connection.stream;
        s.cork();
        for (const p of this.parts) this.write(p);
        if (this.syncing) connection.sync();
        s.uncork();
      },
      handleCommandComplete: (msg: { text?: string }): void => {
        this.onComplete(msg?.text ?? '');
      },
      handleEmptyQuery: (): void => {
        this.onComplete('');
      },
      handleDataRow: (msg: { fields: (string | null)[] }): void => {
        const p = this.parts[0];
        if (p && p.result.rows[p.result.counts.length] === undefined) p.result.rows[p.result.counts.length] = msg.fields;
      },
      handleReadyForQuery: (): void => {
        this.finish(null);
      },
      handleError: (err: unknown): void => {
        // node-postgres has dropped this submittable as its active query; the
        // server discards everything up to the Sync, whose ReadyForQuery then
        // frees the connection for the next query.
        if (this.con && !this.syncing) {
          this.syncing = true;
          this.con.sync();
        }
        this.finish(err ?? new Error('pipeline failed'));
      },
      // COPY data is sent with its statement.
      handleRowDescription: (): void => {},
      handlePortalSuspended: (): void => {},
      handleCopyInResponse: (): void => {},
      handleCopyData: (): void => {},
    } as unknown as pg.Submittable);
  }

  /** Still taking parts: not ending, not failed. */
  get open(): boolean {
    return !this.syncing && !this.done;
  }

  /** The error that ended this pipeline, if one did. */
  get error(): unknown {
    return this.failure;
  }

  /**
   * Send `statements` as one part. Resolves with their answers once the last
   * one is in; rejects with PipelineError (a statement failed) or
   * PipelineSkipped (an earlier one did). Only on an open pipeline.
   */
  send(statements: PipelineStatement[]): Promise<PartResult> {
    if (!this.open) throw new Error('pipeline: send on a pipeline that is ending');
    return new Promise<PartResult>((resolve, reject) => {
      const part: Part = { statements, parses: new Set(), result: { counts: [], rows: [] }, resolve, reject };
      if (statements.length === 0) {
        resolve(part.result);
        return;
      }
      for (const st of statements) {
        if (st.name !== '' && !this.prepared.has(st.name)) {
          part.parses.add(st.name);
          this.prepared.add(st.name);
        }
      }
      this.parts.push(part);
      if (this.con) {
        this.con.stream.cork();
        this.write(part);
        this.con.stream.uncork();
      }
    });
  }

  /** End the pipeline: Sync once everything sent (idempotent). `ended` resolves when it is over. */
  end(): Promise<void> {
    if (!this.syncing && !this.done) {
      this.syncing = true;
      this.con?.sync();
    }
    return this.ended;
  }

  private write(p: Part): void {
    const con = this.con!;
    const parsing = new Set<string>(); // a name may repeat within one part: parse it once
    for (const st of p.statements) {
      if (st.name === '' || (p.parses.has(st.name) && !parsing.has(st.name))) {
        con.parse({ name: st.name, text: st.text });
        if (st.name) parsing.add(st.name);
      }
      con.bind({ statement: st.name, values: st.values.map(param) });
      con.execute({});
      if (st.copyData) {
        // The data as it is, behind a CopyData header ('d', Int32 length
        // including itself): no copy of the data.
        const header = Buffer.from([0x64, 0, 0, 0, 0]);
        header.writeUInt32BE(4 + st.copyData.length, 1);
        con.stream.write(header);
        con.stream.write(st.copyData);
        con.endCopyFrom();
      }
    }
    con.flush();
  }

  private onComplete(tag: string): void {
    const p = this.parts[0];
    if (!p) return;
    const m = /(\d+)$/.exec(tag);
    p.result.counts.push(m ? Number(m[1]) : null);
    if (p.result.counts.length < p.statements.length) return;
    this.parts.shift();
    p.resolve(p.result);
    // Everything sent is answered: end, so the connection serves other queries.
    if (this.parts.length === 0) this.end();
  }

  private finish(err: unknown): void {
    if (this.done) return;
    this.done = true;
    this.failure = err;
    const parts = this.parts.splice(0);
    parts.forEach((p, k) => {
      if (k === 0 && err !== null && !(err instanceof PipelineSkipped)) {
        // The failed statement's Parse may not have run, nor any after it:
        // forget the names first parsed there (the caller must not reuse
        // the failed statement's name, whose Parse may have run).
        const failedAt = p.result.counts.length;
        const first = new Map<string, number>();
        p.statements.forEach((st, i) => {
          if (p.parses.has(st.name) && !first.has(st.name)) first.set(st.name, i);
        });
        for (const [name, i] of first) if (i >= failedAt) this.prepared.delete(name);
        p.reject(new PipelineError(Math.min(failedAt, p.statements.length - 1), err));
      } else {
        for (const name of p.parses) this.prepared.delete(name);
        p.reject(new PipelineSkipped(err ?? new Error('the pipeline ended before this part was answered')));
      }
    });
    this.endedResolve();
  }
}

function param(v: PipelineValue): Buffer | string | null {
  return typeof v === 'number' ? String(v) : v;
}
