import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';

/**
 * A pre-signed GET URL (SigV4 in the query) of one object, made with the client's own endpoint
 * resolution and signer: the same host, path style and region its GetObject would use, so the frame
 * workers can fetch ranges over plain HTTP(S) without the SDK or the credentials. What
 * @aws-sdk/s3-request-presigner does, without one more dependency: run the GetObject middleware up
 * to the signing step, then sign the built request into its query instead of sending it.
 *
 * Only the method, host and path are signed (no Range, no If-Match): the one URL serves every range of
 * the object, and the worker adds those headers itself.
 */
export async function presignGet(client: S3Client, bucket: string, objectKey: string, expiresInSeconds: number): Promise<string> {
  const command = new GetObjectCommand({ Bucket: bucket, Key: objectKey });
  const stack = client.middlewareStack.clone();
  const region = await client.config.region();
  const intercept = () => async (args: { request: unknown }) => {
    const request = args.request as BuiltRequest;
    // Per-attempt bookkeeping of the SDK, not part of what the URL grants.
    for (const h of ['amz-sdk-invocation-id', 'amz-sdk-request', 'x-amz-user-agent']) delete request.headers[h];
    request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
    // The Host a plain client sends (with the port of a non-default endpoint) is what gets signed.
    request.headers.host = request.port ? `${request.hostname}:${request.port}` : request.hostname;
    // S3's signer (SignatureV4MultiRegion) presigns too; its declared type only promises sign().
    const signer = (await client.config.signer()) as unknown as Presigner;
    const signed = await signer.presign(request, { expiresIn: expiresInSeconds, signingRegion: region, unsignableHeaders: new Set(['content-type']) });
    return { output: { $metadata: {}, url: urlOf(signed) }, response: {} };
  };
  stack.addRelativeTo(intercept as never, { name: 'upgradectlPresign', relation: 'before', toMiddleware: 'awsAuthMiddleware', override: true });
  const handler = command.resolveMiddleware(stack as never, client.config, {});
  const { output } = (await handler({ input: command.input } as never)) as unknown as { output: { url: string } };
  return output.url;
}

interface BuiltRequest {
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  headers: Record<string, string>;
  query: Record<string, string | string[] | null>;
}

interface Presigner {
  presign(request: BuiltRequest, opts: { expiresIn: number; signingRegion: string; unsignableHeaders: Set<string> }): Promise<BuiltRequest>;
}

function urlOf(r: BuiltRequest): string {
  const query = Object.entries(r.query)
    .flatMap(([k, v]) => (v === null ? [encodeURIComponent(k)] : (Array.isArray(v) ? v : [v]).map((x) => `${encodeURIComponent(k)}=${encodeURIComponent(x)}`)))
    .join('&');
  return `${r.protocol}//${r.hostname}${r.port ? `:${r.port}` : ''}${r.path}${query ? `?${query}` : ''}`;
}
