import { DdiError } from './errors.js';

/**
 * The JSON that hawkBit's DDI API speaks, as its model classes define it (hawkbit-ddi-api,
 * `org.eclipse.hawkbit.ddi.json.model`; the shapes and their sources are listed in
 * test/daemon/ddi-shapes.md). Only the fields upgradectl reads or writes are typed; unknown fields are
 * ignored, as the server's own classes do (`@JsonIgnoreProperties(ignoreUnknown = true)`).
 * The parse functions turn untrusted JSON into these types or throw DdiError('refused').
 */

export type HandlingType = 'skip' | 'attempt' | 'forced';
export type MaintenanceWindowStatus = 'available' | 'unavailable';
export type ExecutionStatus = 'closed' | 'proceeding' | 'canceled' | 'scheduled' | 'rejected' | 'resumed' | 'downloaded' | 'download';
export type FinalResult = 'success' | 'failure' | 'none';

export interface DdiLink {
  href: string;
}

/** `GET {tenant}/controller/v1/{controllerId}` */
export interface DdiControllerBase {
  config?: { polling?: { sleep?: string } };
  _links?: { deploymentBase?: DdiLink; confirmationBase?: DdiLink; installedBase?: DdiLink; configData?: DdiLink; cancelAction?: DdiLink };
}

export interface DdiArtifact {
  filename: string;
  hashes?: { sha1?: string; md5?: string; sha256?: string };
  size?: number;
  _links?: { download?: DdiLink; 'download-http'?: DdiLink };
}

export interface DdiChunk {
  part: string;
  version: string;
  name: string;
  artifacts: DdiArtifact[];
}

export interface DdiDeployment {
  download?: HandlingType;
  update?: HandlingType;
  /** Absent when the action has no maintenance schedule. */
  maintenanceWindow?: MaintenanceWindowStatus;
  chunks: DdiChunk[];
}

/** `GET …/deploymentBase/{actionId}` */
export interface DdiDeploymentBase {
  id: string;
  deployment: DdiDeployment;
  actionHistory?: { status?: string; messages?: string[] };
}

/**
 * `POST …/confirmationBase/{actionId}/feedback` (hawkBit's confirmation flow: an action waits in
 * WAIT_FOR_CONFIRMATION until the device confirms or denies it; `DdiConfirmationFeedback`).
 */
export interface DdiConfirmationFeedback {
  confirmation: 'confirmed' | 'denied';
  code?: number;
  details?: string[];
}

/** `POST …/deploymentBase/{actionId}/feedback` and `…/cancelAction/{actionId}/feedback` */
export interface DdiActionFeedback {
  /** Milliseconds since the epoch when the status changed on the device. */
  timestamp?: number;
  status: {
    execution: ExecutionStatus;
    result: { finished: FinalResult; progress?: { cnt: number; of?: number } };
    code?: number;
    details?: string[];
  };
}

/** `GET …/cancelAction/{actionId}` */
export interface DdiCancel {
  id: string;
  cancelAction: { stopId: string };
}

/** `PUT …/configData`: the controller's attributes, strings only. */
export interface DdiConfigData {
  data: Record<string, string>;
  mode?: 'merge' | 'replace' | 'remove';
}

// --- parsing untrusted JSON ---------------------------------------------------------------------

type Json = Record<string, unknown>;

function bad(where: string, field: string, want: string): DdiError {
  return new DdiError('refused', `${where}: ${field} is not ${want}`, { hint: 'the server does not speak the hawkBit DDI API as documented; check [hawkbit] url' });
}

function object(v: unknown, where: string, field: string): Json {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad(where, field, 'an object');
  return v as Json;
}

function optObject(v: unknown, where: string, field: string): Json | undefined {
  return v === undefined || v === null ? undefined : object(v, where, field);
}

function string(v: unknown, where: string, field: string): string {
  // hawkBit serialises Long ids as strings in some resources and numbers in others.
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
  if (typeof v !== 'string') throw bad(where, field, 'a string');
  return v;
}

function optString(v: unknown, where: string, field: string): string | undefined {
  return v === undefined || v === null ? undefined : string(v, where, field);
}

function oneOf<T extends string>(v: unknown, allowed: readonly T[], where: string, field: string): T | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw bad(where, field, allowed.join(' | '));
  return v as T;
}

function link(v: unknown, where: string, field: string): DdiLink | undefined {
  const o = optObject(v, where, field);
  return o === undefined ? undefined : { href: string(o.href, where, `${field}.href`) };
}

const HANDLING = ['skip', 'attempt', 'forced'] as const;

export function parseControllerBase(doc: unknown, where: string): DdiControllerBase {
  const o = object(doc, where, 'the answer');
  const config = optObject(o.config, where, 'config');
  const polling = optObject(config?.polling, where, 'config.polling');
  const links = optObject(o._links, where, '_links');
  const out: DdiControllerBase = {};
  if (polling) out.config = { polling: { sleep: optString(polling.sleep, where, 'config.polling.sleep') } };
  if (links) {
    out._links = {};
    for (const name of ['deploymentBase', 'confirmationBase', 'installedBase', 'configData', 'cancelAction'] as const) {
      const l = link(links[name], where, `_links.${name}`);
      if (l) out._links[name] = l;
    }
  }
  return out;
}

function parseArtifact(v: unknown, where: string, field: string): DdiArtifact {
  const o = object(v, where, field);
  const hashes = optObject(o.hashes, where, `${field}.hashes`);
  const links = optObject(o._links, where, `${field}._links`);
  const size = o.size;
  if (size !== undefined && size !== null && !(typeof size === 'number' && Number.isSafeInteger(size) && size >= 0)) throw bad(where, `${field}.size`, 'a byte count');
  return {
    filename: string(o.filename, where, `${field}.filename`),
    hashes: hashes && {
      sha1: optString(hashes.sha1, where, `${field}.hashes.sha1`),
      md5: optString(hashes.md5, where, `${field}.hashes.md5`),
      sha256: optString(hashes.sha256, where, `${field}.hashes.sha256`),
    },
    size: typeof size === 'number' ? size : undefined,
    _links: links && { download: link(links.download, where, `${field}._links.download`), 'download-http': link(links['download-http'], where, `${field}._links.download-http`) },
  };
}

export function parseDeploymentBase(doc: unknown, where: string): DdiDeploymentBase {
  const o = object(doc, where, 'the answer');
  const d = object(o.deployment, where, 'deployment');
  if (!Array.isArray(d.chunks)) throw bad(where, 'deployment.chunks', 'a list');
  const chunks = d.chunks.map((c: unknown, i): DdiChunk => {
    const f = `deployment.chunks[${i}]`;
    const chunk = object(c, where, f);
    const artifacts = chunk.artifacts ?? [];
    if (!Array.isArray(artifacts)) throw bad(where, `${f}.artifacts`, 'a list');
    return {
      part: string(chunk.part, where, `${f}.part`),
      version: string(chunk.version, where, `${f}.version`),
      name: string(chunk.name, where, `${f}.name`),
      artifacts: artifacts.map((a: unknown, j) => parseArtifact(a, where, `${f}.artifacts[${j}]`)),
    };
  });
  const history = optObject(o.actionHistory, where, 'actionHistory');
  return {
    id: string(o.id, where, 'id'),
    deployment: {
      download: oneOf(d.download, HANDLING, where, 'deployment.download'),
      update: oneOf(d.update, HANDLING, where, 'deployment.update'),
      maintenanceWindow: oneOf(d.maintenanceWindow, ['available', 'unavailable'] as const, where, 'deployment.maintenanceWindow'),
      chunks,
    },
    actionHistory: history && { status: optString(history.status, where, 'actionHistory.status') },
  };
}

export function parseCancel(doc: unknown, where: string): DdiCancel {
  const o = object(doc, where, 'the answer');
  const action = object(o.cancelAction, where, 'cancelAction');
  return { id: string(o.id, where, 'id'), cancelAction: { stopId: string(action.stopId, where, 'cancelAction.stopId') } };
}
