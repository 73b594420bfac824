// The systemd-notify package (1.0.0) ships no types: the one call it has, as it behaves (FACTS.md).
declare module 'systemd-notify' {
  interface NotifyOptions {
    ready?: boolean;
    status?: string;
    pid?: number;
    booted?: boolean;
  }
  /** Spawns `systemd-notify` with the options; rejects with the CLI's stderr as a string. */
  function notify(opts?: NotifyOptions): Promise<unknown>;
  export default notify;
}
