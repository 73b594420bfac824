import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { serve, type FaultKind } from './http-server.js';

/**
 * A hawkBit DDI server on 127.0.0.1 that follows the documented API (test/daemon/ddi-shapes.md):
 * the controller base with its polling sleep and _links, deploymentBase with chunks, artifacts and
 * download links (Range via the release file server), the feedback resources (recorded),
 * cancelAction, configData, the confirmation flow (confirmationBase), and the target/gateway token check (or a client certificate). Switches
 * make it answer 429, 410 or 5xx, drop every connection (an outage), send a huge JSON body, or hand
 * out links to another origin or another controller.
 */

export interface DdiTestAction {
  id: string;
  version: string;
  /** Directory holding `releases/<version>/…` as upgradectl publish wrote it. */
  releases: string;
  download?: 'skip' | 'attempt' | 'forced';
  update?: 'skip' | 'attempt' | 'forced';
  maintenanceWindow?: 'available' | 'unavailable';
  /** Leave the payload out of the module (a broken distribution set). */
  withoutPayload?: boolean;
  /** Also the block index and zstd files publish wrote (what a delta prepare reads), as docs/fleet.md uploads them. */
  deltaFiles?: boolean;
}

export interface DdiRecord {
  method: string;
  path: string;
  range: string | undefined;
  authorization: string | undefined;
  status: number;
}

export interface DdiFeedbackRecord {
  resource: 'deploymentBase' | 'cancelAction';
  actionId: string;
  body: any;
}

export interface DdiSwitches {
  /** Answer 429 to this many requests. */
  tooMany?: { times: number; retryAfter?: string };
  /** Answer this 5xx status to this many requests. */
  failing?: { times: number; status: number };
  /** Actions that are no longer active: 410 on their resources. */
  gone: Set<string>;
  /** Cut every connection without an answer. */
  outage?: boolean;
  /** Answer polls with this many bytes of JSON (no Content-Length when `chunked`). */
  hugeJson?: { bytes: number; chunked: boolean };
  /** Faults of the release file server (drop, stall, ignore-range, status) for one artifact, `times` requests. */
  artifactFaults?: Array<FaultKind & { filename: string; times: number }>;
  /** Hand out links that leave the server or name another controller. */
  foreign?: 'deployment-origin' | 'deployment-controller' | 'artifact-origin' | 'artifact-controller';
}

export interface TestDdiServer {
  /** The server URL for [hawkbit] url, without a trailing slash. */
  url: string;
  tenant: string;
  controllerId: string;
  sleep: string;
  switches: DdiSwitches;
  /** Offer this deployment at the next poll (undefined: none). */
  action: DdiTestAction | undefined;
  /** Offer this cancel at the next poll. */
  cancel: { id: string; stopId: string } | undefined;
  /** Show the configData link at the next poll. */
  wantConfigData: boolean;
  /**
   * The confirmation flow: these action ids wait for the device's consent (WAIT_FOR_CONFIRMATION), so
   * polls offer a confirmationBase link instead of deploymentBase until the device confirms.
   */
  awaitingConfirmation: Set<string>;
  /** Bodies POSTed to confirmationBase/{id}/feedback. */
  confirmations: Array<{ actionId: string; body: any }>;
  feedback: DdiFeedbackRecord[];
  configData: any[];
  requests: DdiRecord[];
  count(pathPart: string): number;
  close(): Promise<void>;
}

export interface DdiServerOptions {
  controllerId: string;
  token: string;
  tokenKind?: 'TargetToken' | 'GatewayToken';
  tenant?: string;
  sleep?: string;
  /** Serve HTTPS; with `ca`, also accept a client certificate signed by it instead of a token. */
  tls?: { key: string; cert: string; ca?: string };
  /** The origin machines reach the server at (a VM behind QEMU's user network), for the links it hands out. */
  publicOrigin?: string;
}

export async function startDdiServer(opts: DdiServerOptions): Promise<TestDdiServer> {
  const tenant = opts.tenant ?? 'DEFAULT';
  const scheme = opts.tls ? 'https' : 'http';
  let origin = '';
  const state: TestDdiServer = {
    url: '',
    tenant,
    controllerId: opts.controllerId,
    sleep: opts.sleep ?? '00:05:00',
    switches: { gone: new Set() },
    action: undefined,
    cancel: undefined,
    wantConfigData: false,
    awaitingConfirmation: new Set(),
    confirmations: [],
    feedback: [],
    configData: [],
    requests: [],
    count: (part) => state.requests.filter((r) => r.path.includes(part)).length,
    close: async () => undefined,
  };

  const base = (cid = opts.controllerId) => `/${tenant}/controller/v1/${cid}`;
  const linkBase = (kind: 'deployment' | 'artifact') => {
    const f = state.switches.foreign;
    const host = f === `${kind}-origin` ? origin.replace('127.0.0.1', 'localhost') : origin;
    const cid = f === `${kind}-controller` ? 'someone-else' : opts.controllerId;
    return `${host}${base(cid)}`;
  };

  const json = (res: http.ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/hal+json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };

  const readBody = (req: http.IncomingMessage) =>
    new Promise<any>((resolve) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(parts).toString('utf8')));
        } catch {
          resolve(undefined);
        }
      });
    });

  const deploymentOf = (a: DdiTestAction) => {
    const dir = path.join(a.releases, 'releases', a.version);
    const files = ['manifest.json', 'manifest.json.sig', ...(a.withoutPayload ? [] : ['image.lz4']), ...(a.deltaFiles ? ['image.idx', 'image.zst', 'image.zidx'] : [])];
    const artifacts = files.map((filename) => {
      const file = path.join(dir, filename);
      const bytes = readFileSync(file);
      const href = `${linkBase('artifact')}/softwaremodules/7/artifacts/${filename}`;
      return {
        filename,
        hashes: {
          sha1: createHash('sha1').update(bytes).digest('hex'),
          md5: createHash('md5').update(bytes).digest('hex'),
          sha256: createHash('sha256').update(bytes).digest('hex'),
        },
        size: statSync(file).size,
        _links: { 'download-http': { href }, 'md5sum-http': { href: `${href}.MD5SUM` } },
      };
    });
    const deployment: Record<string, unknown> = {
      download: a.download ?? 'forced',
      update: a.update ?? 'forced',
      chunks: [{ part: 'os', version: a.version, name: 'upgradectl image', artifacts }],
    };
    if (a.maintenanceWindow) deployment.maintenanceWindow = a.maintenanceWindow;
    return { id: a.id, deployment, actionHistory: { status: 'RUNNING', messages: ['Assignment initiated by user \'test\''] } };
  };

  const authorised = (req: http.IncomingMessage) => {
    const socket = req.socket as TLSSocket;
    if (opts.tls?.ca && socket.authorized) return true;
    return req.headers.authorization === `${opts.tokenKind ?? 'TargetToken'} ${opts.token}`;
  };

  const route = async (req: http.IncomingMessage, res: http.ServerResponse, p: string) => {
    const sw = state.switches;
    if (sw.outage) {
      req.socket.destroy();
      return;
    }
    if (sw.tooMany && sw.tooMany.times > 0) {
      sw.tooMany.times -= 1;
      res.writeHead(429, sw.tooMany.retryAfter === undefined ? {} : { 'retry-after': sw.tooMany.retryAfter });
      res.end();
      return;
    }
    if (sw.failing && sw.failing.times > 0) {
      sw.failing.times -= 1;
      res.writeHead(sw.failing.status, { 'content-type': 'text/plain' });
      res.end('injected failure\n');
      return;
    }
    if (!authorised(req)) {
      res.writeHead(401, { 'www-authenticate': 'TargetToken' });
      res.end();
      return;
    }
    const own = base();
    if (!p.startsWith(own)) {
      res.writeHead(404);
      res.end();
      return;
    }
    const rest = p.slice(own.length);
    let m: RegExpExecArray | null;
    if (rest === '' && req.method === 'GET') {
      if (sw.hugeJson) return sendHuge(res, sw.hugeJson);
      const links: Record<string, { href: string }> = {};
      if (state.action && state.awaitingConfirmation.has(state.action.id)) {
        links.confirmationBase = { href: `${linkBase('deployment')}/confirmationBase/${state.action.id}?c=-2122565939` };
      } else if (state.action) links.deploymentBase = { href: `${linkBase('deployment')}/deploymentBase/${state.action.id}?c=-2127183556` };
      if (state.cancel) links.cancelAction = { href: `${origin}${own}/cancelAction/${state.cancel.id}` };
      if (state.wantConfigData) links.configData = { href: `${origin}${own}/configData` };
      return json(res, 200, { config: { polling: { sleep: state.sleep } }, _links: links });
    }
    if ((m = /^\/deploymentBase\/([^/]+)$/.exec(rest)) && req.method === 'GET') {
      const a = state.action;
      if (!a || a.id !== m[1] || sw.gone.has(m[1]!)) return json(res, 410, {});
      return json(res, 200, deploymentOf(a));
    }
    if ((m = /^\/confirmationBase\/([^/]+)$/.exec(rest)) && req.method === 'GET') {
      const a = state.action;
      if (!a || a.id !== m[1] || !state.awaitingConfirmation.has(a.id)) return json(res, 404, {});
      return json(res, 200, deploymentOf(a));
    }
    if ((m = /^\/confirmationBase\/([^/]+)\/feedback$/.exec(rest)) && req.method === 'POST') {
      // hawkBit: confirmed -> RUNNING (offered as a deployment); denied -> stays waiting; an action
      // that waits for nothing -> 404 (JpaConfirmationManagement, DdiRootController).
      const body = await readBody(req);
      if (body?.confirmation !== 'confirmed' && body?.confirmation !== 'denied') return json(res, 400, { message: 'invalid confirmation' });
      if (!state.awaitingConfirmation.has(m[1]!)) return json(res, 404, {});
      state.confirmations.push({ actionId: m[1]!, body });
      if (body.confirmation === 'confirmed') state.awaitingConfirmation.delete(m[1]!);
      res.writeHead(200);
      res.end();
      return;
    }
    if ((m = /^\/(deploymentBase|cancelAction)\/([^/]+)\/feedback$/.exec(rest)) && req.method === 'POST') {
      const body = await readBody(req);
      if (sw.gone.has(m[2]!)) return json(res, 410, {});
      if (!body?.status?.execution || !body.status.result?.finished) return json(res, 400, { message: 'invalid feedback' });
      state.feedback.push({ resource: m[1] as DdiFeedbackRecord['resource'], actionId: m[2]!, body });
      res.writeHead(200);
      res.end();
      return;
    }
    if ((m = /^\/cancelAction\/([^/]+)$/.exec(rest)) && req.method === 'GET') {
      if (!state.cancel || state.cancel.id !== m[1]) return json(res, 404, {});
      return json(res, 200, { id: state.cancel.id, cancelAction: { stopId: state.cancel.stopId } });
    }
    if (rest === '/configData' && req.method === 'PUT') {
      state.configData.push(await readBody(req));
      state.wantConfigData = false;
      res.writeHead(200);
      res.end();
      return;
    }
    if ((m = /^\/softwaremodules\/7\/artifacts\/([^/]+)$/.exec(rest)) && (req.method === 'GET' || req.method === 'HEAD')) {
      const a = state.action;
      if (!a || sw.gone.has(a.id)) return json(res, 404, {});
      const filename = decodeURIComponent(m[1]!);
      const hit: FaultKind[] = [];
      for (const f of sw.artifactFaults ?? []) {
        if (f.filename !== filename || f.times <= 0 || (req.method === 'HEAD' && f.kind !== 'status')) continue;
        f.times -= 1;
        hit.push(f);
      }
      return serve(a.releases, `/releases/${a.version}/${filename}`, req, res, hit);
    }
    json(res, 404, { message: `no such resource ${rest}` });
  };

  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const p = new URL(req.url ?? '/', 'http://x').pathname;
    const record: DdiRecord = { method: req.method ?? '', path: p, range: req.headers.range, authorization: req.headers.authorization, status: 0 };
    state.requests.push(record);
    res.on('finish', () => (record.status = res.statusCode));
    route(req, res, p).catch((err: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500);
        res.end(String(err));
      } else res.destroy();
    });
  };

  const server = opts.tls
    ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert, ca: opts.tls.ca, requestCert: Boolean(opts.tls.ca), rejectUnauthorized: false }, handler)
    : http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  state.url = `${scheme}://127.0.0.1:${port}`;
  origin = opts.publicOrigin ?? state.url;
  state.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return state;
}

/** A hostile answer: valid-looking JSON that never ends soon. Stops when the client hangs up. */
async function sendHuge(res: http.ServerResponse, huge: { bytes: number; chunked: boolean }): Promise<void> {
  const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json' };
  if (!huge.chunked) headers['content-length'] = huge.bytes;
  res.writeHead(200, headers);
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  chunk[0] = 0x5b; // '['
  let sent = 0;
  while (sent < huge.bytes && !res.destroyed) {
    const piece = chunk.subarray(0, Math.min(chunk.length, huge.bytes - sent));
    sent += piece.length;
    if (!res.write(piece)) await new Promise<void>((resolve) => { res.once('drain', resolve); res.once('close', resolve); });
  }
  res.end();
}
