/**
 * pipeline — several statements in one round trip on a node-postgres
 * client. Part of the **apply** stage: apply.ts sends each batch's
 * statements (BEGIN, one per table and operation, COPY data included) as one
 * pipeline, then its COMMIT, so a batch costs two round trips to the target
 * whatever it holds. Over a WAN link to the target (the agent runs near the
 * source) the round trips, not the statements, would otherwise bound the
 * apply rate.
 *
 * Protocol (PostgreSQL docs, "Extended Query" and "Pipelining"): per
 * statement Parse (skipped when the named statement is already prepared),
 * Bind, Execute, and for COPY … FROM STDIN its CopyData and CopyDone right
 * behind the Execute; one Sync at the end. The server answers in order; after
 * an error it discards everything up to the Sync (CopyData included), so
 * nothing after a failed statement runs, and the pipeline fails naming the
 * statement (`PipelineError.index`).
 *
 * Hand-rolled as a node-postgres "submittable" (the interface pg-copy-streams
 * and pg-cursor use): node-postgres' own pipeline mode refuses submittables
 * and so cannot carry COPY, and it ends every query with a Sync.
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

/** The statement at `index` failed; `cause` is the server's (or the connection's) error. */
export class PipelineError extends Error {
  constructor(readonly index: number, override readonly cause: unknown) {
    super((cause as Error)?.message ?? String(cause));
  }
}

/** The structural part of node-postgres' Connection that a submittable writes to. */
interface Connection {
  stream: NodeJS.WritableStream & { cork(): void; uncork(): void };
  parse(q: { name: string; text: string }): void;
  bind(c: { statement: string; values: (Buffer | string | null)[] }): void;
  execute(c: Record<string, never>): void;
  endCopyFrom(): void;
  sync(): void;
}

/**
 * Run `statements` in one round trip. Resolves with each statement's row
 * count (null for statements without one, like BEGIN); rejects with a
 * PipelineError. `prepared` holds the names the session has prepared: a name
 * in it is not parsed again, and a name is added once its statement ran.
 */
export function runPipeline(client: pg.Client, statements: PipelineStatement[], prepared: Set<string>): Promise<(number | null)[]> {
  return new Promise((resolve, reject) => {
    const counts: (number | null)[] = [];
    let settled = false;
    const submittable = {
      submit(connection: Connection): void {
        const s = connection.stream;
        s.cork();
        const parsing = new Set<string>(); // a name may repeat within one pipeline: parse it once
        for (const st of statements) {
          if (st.name === '' || !(prepared.has(st.name) || parsing.has(st.name))) {
            connection.parse({ name: st.name, text: st.text });
            if (st.name) parsing.add(st.name);
          }
          connection.bind({ statement: st.name, values: st.values.map(param) });
          connection.execute({});
          if (st.copyData) {
            // The data as it is, behind a CopyData header ('d', Int32 length
            // including itself): no copy of the data.
            const header = Buffer.from([0x64, 0, 0, 0, 0]);
            header.writeUInt32BE(4 + st.copyData.length, 1);
            s.write(header);
            s.write(st.copyData);
            connection.endCopyFrom();
          }
        }
        connection.sync();
        s.uncork();
      },
      handleCommandComplete(msg: { text?: string }): void {
        const st = statements[counts.length];
        if (st?.name) prepared.add(st.name);
        const m = /(\d+)$/.exec(msg?.text ?? '');
        counts.push(m ? Number(m[1]) : null);
      },
      handleReadyForQuery(): void {
        if (settled) return;
        settled = true;
        resolve(counts);
      },
      handleError(err: unknown): void {
        // node-postgres ends the submittable here; the Sync's ReadyForQuery
        // still follows and frees the connection for the next query.
        if (settled) return;
        settled = true;
        reject(new PipelineError(Math.min(counts.length, statements.length - 1), err));
      },
      // No statement here returns rows; COPY data was sent with the statement.
      handleRowDescription(): void {},
      handleDataRow(): void {},
      handleEmptyQuery(): void {},
      handlePortalSuspended(): void {},
      handleCopyInResponse(): void {},
      handleCopyData(): void {},
    };
    client.query(submittable as unknown as pg.Submittable);
  });
}

function param(v: PipelineValue): Buffer | string | null {
  return typeof v === 'number' ? String(v) : v;
}
