/**
 * provider-host — the tests drive the provider through the real
 * dynamic-provider host with provider/host-driver.ts (shared with the demo).
 */
export * from '../../provider/host-driver';
