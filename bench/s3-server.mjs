// s3rver (an S3-protocol server on the local filesystem) for benchmarks, in its own process, with one
// bucket kept under DIR so that a release published once is served again by later runs.
// Usage: node s3-server.mjs DIR BUCKET → prints the port.
import { createRequire } from 'node:module';

const S3rver = createRequire(import.meta.url)('s3rver');
const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
const { port } = await server.run();
console.log(port);
process.on('disconnect', () => process.exit(0));
