import { UpgradeError } from '../../core/errors.js';
import { isVersion } from '../../core/version.js';
import { checkArtifactLink, type LinkScope } from './links.js';
import type { DdiArtifact, DdiDeploymentBase } from './types.js';

/** The artifact file that marks a software module as an upgradectl release. */
export const MANIFEST_FILE = 'manifest.json';

/** One artifact as the Source fetches it: where, and what the server says it is (a transport check only). */
export interface ArtifactRef {
  filename: string;
  url: URL;
  size: number;
  sha256: string | undefined;
}

/** A deployment's release: the one chunk (software module) whose artifacts hold our manifest. */
export interface DdiRelease {
  actionId: string;
  version: string;
  artifacts: Map<string, ArtifactRef>;
}

/**
 * Find the release in a deployment and check every artifact link before anything is fetched. Throws
 * UpgradeError('MANIFEST') when the deployment is not one upgradectl release (the loop reports that as
 * the action's failure), DdiError('refused') when a link leaves the server or names another controller
 * (logged, nothing done).
 */
export function releaseOf(base: DdiDeploymentBase, scope: LinkScope): DdiRelease {
  const ours = base.deployment.chunks.filter((c) => c.artifacts.some((a) => a.filename === MANIFEST_FILE));
  if (ours.length !== 1) {
    throw new UpgradeError('MANIFEST', `action ${base.id} has ${ours.length} software modules with a ${MANIFEST_FILE} artifact; upgradectl installs exactly one release`, {
      hint: 'assign a distribution set with one software module holding manifest.json, manifest.json.sig and the payload from upgradectl publish',
    });
  }
  const chunk = ours[0]!;
  const version: string = chunk.version;
  if (!isVersion(version)) {
    throw new UpgradeError('MANIFEST', `action ${base.id}: software module version "${String(version).slice(0, 80)}" is not a valid upgradectl version`, {
      hint: 'give the software module the release version upgradectl publish used',
    });
  }
  const artifacts = new Map<string, ArtifactRef>();
  for (const a of chunk.artifacts) {
    if (artifacts.has(a.filename)) throw new UpgradeError('MANIFEST', `action ${base.id}: artifact ${a.filename} appears twice`);
    artifacts.set(a.filename, artifactRef(a, scope, base.id));
  }
  return { actionId: base.id, version, artifacts };
}

function artifactRef(a: DdiArtifact, scope: LinkScope, actionId: string): ArtifactRef {
  if (a.size === undefined) throw new UpgradeError('MANIFEST', `action ${actionId}: artifact ${a.filename} has no size`);
  // hawkBit offers `download` (https) and `download-http`; take the one on the configured server.
  const candidates = [a._links?.download?.href, a._links?.['download-http']?.href].filter((h): h is string => h !== undefined);
  if (candidates.length === 0) throw new UpgradeError('MANIFEST', `action ${actionId}: artifact ${a.filename} has no download link`);
  const sameOrigin = candidates.find((h) => URL.canParse(h) && new URL(h).origin === scope.server.origin);
  const url = checkArtifactLink(sameOrigin ?? candidates[0]!, scope, `download link of ${a.filename}`);
  const sha256 = a.hashes?.sha256?.toLowerCase();
  return { filename: a.filename, url, size: a.size, sha256: sha256 && /^[0-9a-f]{64}$/.test(sha256) ? sha256 : undefined };
}
