import { log } from '../../core/log.js';
import { DdiError } from './errors.js';

/**
 * Every URL the server hands us is checked before it is used. The server may tell us *when*, never
 * *where else*: a link to another origin would send our token (and fetch bytes) elsewhere, and a link
 * naming another controller id would act on an instruction meant for another machine.
 */
export interface LinkScope {
  /** The configured server, e.g. https://hawkbit.example.com (a path prefix is allowed). */
  server: URL;
  /** `{server}/{tenant}/controller/v1/{controllerId}` */
  controllerUrl: URL;
  controllerId: string;
}

/** A resource of the DDI API: same origin and under this controller's base path. */
export function checkApiLink(href: string, scope: LinkScope, what: string): URL {
  const url = checkOrigin(href, scope, what);
  const base = scope.controllerUrl.pathname.replace(/\/+$/, '');
  if (!url.pathname.startsWith(`${base}/`)) {
    throw refuse(`${what} ${shown(url)} is not a resource of controller ${scope.controllerId} (expected under ${base}/)`);
  }
  return url;
}

/**
 * An artifact download: same origin and naming this controller id as one path segment (hawkBit's own
 * `…/controller/v1/{id}/softwaremodules/…` and its download server's `…/download/controller/{id}/…`).
 */
export function checkArtifactLink(href: string, scope: LinkScope, what: string): URL {
  const url = checkOrigin(href, scope, what);
  const segments = url.pathname.split('/').map((s) => safeDecode(s));
  if (!segments.includes(scope.controllerId)) throw refuse(`${what} ${shown(url)} does not name controller ${scope.controllerId}`);
  return url;
}

function checkOrigin(href: string, scope: LinkScope, what: string): URL {
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    throw refuse(`${what} "${href.slice(0, 200)}" is not an absolute URL`);
  }
  if (url.origin !== scope.server.origin) throw refuse(`${what} ${shown(url)} points to ${url.origin}, not to the configured server ${scope.server.origin}`);
  if (url.username !== '' || url.password !== '') throw refuse(`${what} ${shown(url)} carries credentials`);
  url.hash = '';
  return url;
}

function refuse(message: string): DdiError {
  // Logged where it is found: the loop only sees that nothing is to be done.
  log.warn(`hawkBit: refused ${message}`);
  return new DdiError('refused', message, { hint: 'the server sent a link upgradectl will not follow; check the server and [hawkbit] url, tenant and controller_id' });
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** A URL for messages: no query (hawkBit's download links may carry signed tokens), no credentials. */
export function shown(url: URL): string {
  return `${url.origin}${url.pathname}`;
}
