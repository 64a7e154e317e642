/**
 * A migration's status as the agent reports it, for tests that feed the
 * provider a status without an agent: a synced migration before its cutover,
 * with `over` laid on top.
 */
import type { MigrationMessage } from '../../api/client';

export function migrationStatus(over: Partial<MigrationMessage> = {}): MigrationMessage {
  return {
    id: 'orders',
    phase: 'syncing',
    errorCode: '',
    errorMessage: '',
    errorRemedy: '',
    createdAt: '',
    updatedAt: '',
    tables: [],
    tablesTotal: 3,
    tablesCopied: 3,
    rowsCopied: 30,
    bytesCopied: 0,
    bytesEstimated: 0,
    progress: 1,
    etaSeconds: -1,
    lagBytes: 0,
    lagSeconds: 0,
    retainedWalBytes: 1000,
    applyRate: 0,
    appliedLsn: '0/1',
    slotName: 'pgferry_orders',
    publicationName: 'pgferry_orders',
    specFingerprint: 'x',
    cutover: null,
    activeEndpoint: 'source',
    changesApplied: 0,
    sourceVersion: '14.0',
    targetVersion: '17.0',
    paused: false,
    pausedAt: '',
    fence: null,
    verification: null,
    schemaChanges: null,
    reverse: null,
    cutback: null,
    ...over,
  };
}
