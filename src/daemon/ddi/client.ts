import { Agent, request, type Dispatcher } from 'undici';
import { errnoOf, messageOf } from '../../core/errors.js';
import { log } from '../../core/log.js';
import { isLoopbackHost } from '../../release/sources/source.js';
import { DdiError } from './errors.js';
import { JSON_CAP, readJson } from './json-body.js';
import { checkApiLink, shown, type LinkScope } from './links.js';
import { sleepFrom } from './polling.js';
import {
  parseCancel,
  parseControllerBase,
  parseDeploymentBase,
  type DdiActionFeedback,
  type DdiCancel,
  type DdiConfirmationFeedback,
  type DdiConfigData,
  type DdiControllerBase,
  type DdiDeploymentBase,
} from './types.js';

export interface DdiClientOptions {
  /** The server, e.g. https://hawkbit.example.com or https://host/prefix (http:// only to loopback). */
  url: string;
  tenant: string;
  controllerId: string;
  /** `Authorization: TargetToken …` (this machine's) or `GatewayToken …` (the tenant's gateway token). */
  token?: { kind: 'target' | 'gateway'; value: string };
  /** PEM: CA to trust for the server (in addition to Node's roots), and a client certificate for mTLS. */
  tls?: { ca?: string; cert?: string; key?: string };
  /** Cap for JSON answers (default 1 MiB). */
  jsonCap?: number;
  /** No headers or no body byte for this long counts as a stall (default 30 s). */
  timeoutMs?: number;
}

/** One poll's answer: how long the server wants us to sleep, and the (checked) links it offers. */
export interface PollAnswer {
  sleepMs: number;
  deploymentBase?: URL;
  /** An action that waits for this machine's consent (the server's confirmation flow is on). */
  confirmationBase?: URL;
  cancelAction?: URL;
  configData?: URL;
  installedBase?: URL;
}

/** Every action id we put into a path: hawkBit's are numbers; anything else is not spliced into a URL. */
const ACTION_ID = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * A small client of hawkBit's Direct Device Integration API: one request per call, no retry loop of
 * its own (the check-in loop and the feedback outbox decide when to try again, so that the server's
 * polling sleep stays in charge). TLS is always verified; redirects are not followed; every link the
 * server hands out is checked (links.ts) before it is used.
 */
export class DdiClient {
  readonly controllerId: string;
  readonly scope: LinkScope;
  private readonly agent: Agent;
  private readonly authorization: string | undefined;
  private readonly jsonCap: number;

  constructor(opts: DdiClientOptions) {
    const server = new URL(opts.url);
    if (server.protocol !== 'https:' && !(server.protocol === 'http:' && isLoopbackHost(server.hostname))) {
      throw new DdiError('refused', `refusing ${server.protocol}// for the hawkBit server ${shown(server)}`, {
        hint: 'use https:// in [hawkbit] url (http:// is only allowed to this machine: 127.0.0.0/8, ::1, localhost)',
      });
    }
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(opts.tenant)) throw new DdiError('refused', `tenant "${opts.tenant}" is not valid`, { hint: 'set [hawkbit] tenant to the tenant id, e.g. DEFAULT' });
    if (!/^[A-Za-z0-9._:-]{1,128}$/.test(opts.controllerId)) {
      throw new DdiError('refused', `controller id "${opts.controllerId}" is not valid`, { hint: 'set [hawkbit] controller_id to letters, digits and . _ : - (at most 128)' });
    }
    server.hash = '';
    server.search = '';
    server.pathname = server.pathname.replace(/\/+$/, '');
    const controllerUrl = new URL(`${server.href.replace(/\/+$/, '')}/${encodeURIComponent(opts.tenant)}/controller/v1/${encodeURIComponent(opts.controllerId)}`);
    this.controllerId = opts.controllerId;
    this.scope = { server, controllerUrl, controllerId: opts.controllerId };
    this.authorization = opts.token && `${opts.token.kind === 'gateway' ? 'GatewayToken' : 'TargetToken'} ${opts.token.value}`;
    this.jsonCap = opts.jsonCap ?? JSON_CAP;
    const timeout = opts.timeoutMs ?? 30_000;
    this.agent = new Agent({
      headersTimeout: timeout,
      bodyTimeout: timeout,
      keepAliveTimeout: 30_000,
      connections: 8,
      // rejectUnauthorized stays at its default (true): there is no switch to turn verification off.
      connect: { timeout, ca: opts.tls?.ca, cert: opts.tls?.cert, key: opts.tls?.key },
    });
  }

  /** `{server}/{tenant}/controller/v1/{controllerId}` */
  get url(): string {
    return this.scope.controllerUrl.href;
  }

  /** GET the controller base: the polling sleep and the links to what the server wants done. */
  async poll(): Promise<PollAnswer> {
    const url = this.scope.controllerUrl;
    const base: DdiControllerBase = parseControllerBase(await this.getJson(url), shown(url));
    const answer: PollAnswer = { sleepMs: sleepFrom(base.config?.polling?.sleep) };
    for (const name of ['deploymentBase', 'confirmationBase', 'cancelAction', 'configData', 'installedBase'] as const) {
      const href = base._links?.[name]?.href;
      if (href === undefined) continue;
      try {
        answer[name] = checkApiLink(href, this.scope, name);
      } catch {
        // Already logged by the check: a foreign instruction is dropped and the rest of the answer stands.
      }
    }
    return answer;
  }

  /** GET a deploymentBase link from a poll: the action, its handling and its artifacts. */
  async deployment(href: URL | string): Promise<DdiDeploymentBase> {
    return this.actionDocument(href, 'deploymentBase');
  }

  /** POST feedback on a deployment action. */
  async sendFeedback(actionId: string, feedback: DdiActionFeedback): Promise<void> {
    await this.postJson(this.actionUrl('deploymentBase', actionId, 'feedback'), feedback);
  }

  /**
   * GET a confirmationBase link from a poll: the action that waits for consent, in deploymentBase's
   * shape (what would be installed).
   */
  async confirmation(href: URL | string): Promise<DdiDeploymentBase> {
    return this.actionDocument(href, 'confirmationBase');
  }

  /** POST this machine's answer to an action that waits for confirmation. */
  async sendConfirmation(actionId: string, answer: DdiConfirmationFeedback): Promise<void> {
    await this.postJson(this.actionUrl('confirmationBase', actionId, 'feedback'), answer);
  }

  /** GET a cancelAction link from a poll: which action the server wants stopped. */
  async cancel(href: URL | string): Promise<DdiCancel> {
    const url = checkApiLink(String(href), this.scope, 'cancelAction');
    const id = idAfter(url, 'cancelAction');
    const doc = parseCancel(await this.getJson(url), shown(url));
    if (doc.id !== id) throw new DdiError('refused', `${shown(url)} describes cancel action ${doc.id}, not ${id}`);
    return doc;
  }

  /** POST feedback on a cancel action: closed+success accepts the cancellation, rejected refuses it. */
  async sendCancelFeedback(cancelId: string, feedback: DdiActionFeedback): Promise<void> {
    await this.postJson(this.actionUrl('cancelAction', cancelId, 'feedback'), feedback);
  }

  /** PUT this controller's attributes. */
  async putConfigData(data: DdiConfigData['data'], mode: DdiConfigData['mode'] = 'merge'): Promise<void> {
    const url = new URL(`${this.scope.controllerUrl.href}/configData`);
    const body: DdiConfigData = { data, mode };
    await this.send('PUT', url, { body });
  }

  /**
   * GET an artifact (already checked by the caller), optionally a byte range. Answers 200, 206 and 416
   * to the caller (the Source decides what they mean); every other status becomes a DdiError.
   */
  async getArtifact(url: URL, range?: string): Promise<Dispatcher.ResponseData> {
    return this.send('GET', url, { headers: range === undefined ? {} : { range }, accept: [200, 206, 416] });
  }

  async close(): Promise<void> {
    await this.agent.destroy();
  }

  private actionUrl(resource: 'deploymentBase' | 'confirmationBase' | 'cancelAction', id: string, tail: string): URL {
    if (!ACTION_ID.test(id)) throw new DdiError('refused', `action id "${id.slice(0, 80)}" is not valid`);
    return new URL(`${this.scope.controllerUrl.href}/${resource}/${id}/${tail}`);
  }

  /** A checked link to an action's document, which must describe the action the link names. */
  private async actionDocument(href: URL | string, resource: 'deploymentBase' | 'confirmationBase'): Promise<DdiDeploymentBase> {
    const url = checkApiLink(String(href), this.scope, resource);
    const actionId = idAfter(url, resource);
    const doc = parseDeploymentBase(await this.getJson(url), shown(url));
    if (doc.id !== actionId) throw new DdiError('refused', `${shown(url)} describes action ${doc.id}, not ${actionId}`);
    return doc;
  }

  private async getJson(url: URL): Promise<unknown> {
    const res = await this.send('GET', url, { headers: { accept: 'application/hal+json, application/json' } });
    return readJson(res, this.jsonCap, `GET ${shown(url)}`);
  }

  private async postJson(url: URL, body: unknown): Promise<void> {
    await this.send('POST', url, { body });
  }

  private async send(
    method: 'GET' | 'POST' | 'PUT',
    url: URL,
    opts: { headers?: Record<string, string>; body?: unknown; accept?: number[] },
  ): Promise<Dispatcher.ResponseData> {
    const what = `${method} ${shown(url)}`;
    const headers: Record<string, string> = { ...opts.headers };
    if (this.authorization !== undefined) headers.authorization = this.authorization;
    let payload: string | undefined;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(opts.body);
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { dispatcher: this.agent, method, headers, body: payload });
    } catch (err) {
      throw networkError(what, err);
    }
    const ok = opts.accept ?? [200, 201, 204];
    if (ok.includes(res.statusCode)) {
      if (method !== 'GET') await res.body.dump().catch(() => undefined);
      return res;
    }
    res.body.dump().catch(() => undefined);
    throw statusError(what, res);
  }
}

/** The path segment after `resource`: the action id a link names (`…/deploymentBase/5?c=…` → "5"). */
function idAfter(url: URL, resource: string): string {
  const parts = url.pathname.split('/');
  const i = parts.lastIndexOf(resource);
  const id = i >= 0 ? parts[i + 1] : undefined;
  if (id === undefined || !ACTION_ID.test(id) || parts.length !== i + 2) throw new DdiError('refused', `${shown(url)} names no ${resource} action id`);
  return id;
}

function networkError(what: string, err: unknown): DdiError {
  const code = errnoOf(err);
  // A certificate problem is not an outage: say so, it needs the operator (CA file, clock, name).
  if (code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|HOSTNAME/.test(code)) {
    log.warn(`hawkBit: ${what}: TLS verification failed (${code})`);
    return new DdiError('unavailable', `${what}: the server's certificate was not accepted (${code}: ${messageOf(err)})`, {
      cause: err,
      hint: 'set [hawkbit] ca_file to the CA that signed the server certificate, and check the host name and the clock',
    });
  }
  return new DdiError('unavailable', `${what} failed: ${code ? `${code}: ` : ''}${messageOf(err)}`, { cause: err });
}

function statusError(what: string, res: Dispatcher.ResponseData): DdiError {
  const status = res.statusCode;
  const at = `${what} answered HTTP ${status}`;
  if (status === 429) return new DdiError('rate-limited', at, { status, retryAfterMs: retryAfterMs(res.headers['retry-after']) });
  if (status === 410) return new DdiError('gone', at, { status });
  if (status === 401 || status === 403) {
    log.warn(`hawkBit: ${at}: credentials refused; nothing is done until they are fixed`);
    return new DdiError('unauthorized', at, { status });
  }
  if (status >= 300 && status < 400) return new DdiError('refused', `${at} (a redirect to ${String(res.headers.location ?? 'nowhere')}); not followed`, { status });
  if (status >= 500 || status === 408) return new DdiError('unavailable', at, { status });
  return new DdiError('rejected', at, { status });
}

function retryAfterMs(value: string | string[] | undefined): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) return undefined;
  if (/^\d{1,9}$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}
